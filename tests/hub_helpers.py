"""Helpers for the model-pack tests: tiny packs (an exported kface model plus a decoy) and a local
HTTP server on 127.0.0.1 that serves them well, cuts them short or never answers."""

from __future__ import annotations

import hashlib
import http.server
import json
import socket
import threading
import zipfile
from pathlib import Path

NETWORK, EMB = "mbf_small", 32


def tiny_onnx(folder: Path) -> Path:
    """A small kface model exported to ONNX with ``kface export`` (random weights, real BatchNorm statistics)."""
    import torch
    from model_helpers import calibrated

    from kface_cli.embedding.export import export_model
    from kface_cli.models.registry import get_backbone

    run = folder / "runs" / "tiny"
    run.mkdir(parents=True)
    torch.manual_seed(3)
    torch.save(calibrated(get_backbone(NETWORK, EMB)).state_dict(), run / "backbone.pth")
    (run / "config.json").write_text(json.dumps({"network": NETWORK, "embedding_size": EMB}))
    return export_model(run, folder / "tiny.onnx", opset=17).path


def decoy_onnx(path: Path, size: int = 96) -> Path:
    """An ONNX model that is not a face embedder: input [1, 3, size, size], output [1, 3] (like genderage)."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("GlobalAveragePool", ["x"], ["p"]), helper.make_node("Flatten", ["p"], ["y"])],
        "decoy",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, size, size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def make_zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return path


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class PackServer:
    """``http://127.0.0.1:PORT/<name>``: routes name -> (bytes, mode); mode "ok", "cut" (half the
    bytes, then the connection closes) or "hang" (the request is read, nothing is ever answered)."""

    def __init__(self, routes: dict[str, tuple[bytes, str]]):
        self.routes = routes
        self.requests: list[str] = []
        self._release = threading.Event()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):
                name = self.path.lstrip("/")
                server.requests.append(name)
                if name not in server.routes:
                    self.send_error(404)
                    return
                data, mode = server.routes[name]
                if mode == "hang":
                    server._release.wait(30)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data if mode == "ok" else data[: len(data) // 2])
                self.wfile.flush()
                if mode == "cut":
                    self.close_connection = True

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"

    def __enter__(self) -> PackServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def closed_port() -> int:
    """A port on 127.0.0.1 where nothing listens (a connection is refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
