"""Which model in a pack embeds faces: found by its signature, never by its file name.

A face-recognition (embedding) model takes one image input of 3 x 112 x 112 (``[N, 3, 112, 112]``,
the batch axis may be symbolic) and gives one output of ``[N, D]``: the embedding. Detectors take
larger or free-sized images, landmark and gender/age models other sizes or several outputs; they
are listed and left alone. ONNX Runtime reads the files (it runs no Python from them).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kface_cli.defaults import FACE_SIZE
from kface_cli.errors import InputError

#: Embedding sizes a recognition model may have (insightface's are 512; kface's 128..512).
MIN_EMBEDDING, MAX_EMBEDDING = 32, 4096


@dataclass(frozen=True)
class ModelSignature:
    file: str  # relative to the pack folder
    inputs: list[list[int | str | None]]
    outputs: list[list[int | str | None]]
    embedding_size: int | None = None  # set for a recognition model
    error: str | None = None  # the file could not be read as ONNX

    @property
    def is_recognition(self) -> bool:
        return self.embedding_size is not None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"file": self.file, "inputs": self.inputs, "outputs": self.outputs}
        if self.embedding_size is not None:
            out["embedding_size"] = self.embedding_size
        if self.error:
            out["error"] = self.error
        return out


@dataclass
class PackModels:
    recognition: ModelSignature | None
    others: list[ModelSignature] = field(default_factory=list)


def _dims(shape: Any) -> list[int | str | None]:
    return [d if isinstance(d, int | str) else None for d in (shape or [])]


def _embedding_size(inputs: list, outputs: list, session: Any) -> int | None:
    """D when the signature is [N, 3, 112, 112] -> [N, D], else None."""
    if len(inputs) != 1 or len(outputs) != 1:
        return None
    shape = _dims(inputs[0].shape)
    if len(shape) != 4 or shape[1:] != [3, FACE_SIZE, FACE_SIZE] or "float" not in str(inputs[0].type):
        return None
    out = _dims(outputs[0].shape)
    if len(out) != 2:
        return None
    size = out[1]
    if not isinstance(size, int):  # a symbolic width: run one blank face to learn it
        import numpy as np

        batch = 1 if not isinstance(shape[0], int) else shape[0]
        result = session.run(None, {inputs[0].name: np.zeros((batch, 3, FACE_SIZE, FACE_SIZE), np.float32)})[0]
        if result.ndim != 2:
            return None
        size = int(result.shape[1])
    return size if MIN_EMBEDDING <= size <= MAX_EMBEDDING else None


def read_signature(path: Path, root: Path) -> ModelSignature:
    """The inputs and outputs of the ONNX model at ``path`` (named relative to ``root``)."""
    import onnxruntime as ort

    rel = path.relative_to(root).as_posix()
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # only the signature is wanted
    try:
        session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # ORT's InvalidProtobuf, Fail...
        return ModelSignature(rel, [], [], error=str(e).splitlines()[0][:200])
    inputs, outputs = session.get_inputs(), session.get_outputs()
    return ModelSignature(
        rel,
        [_dims(i.shape) for i in inputs],
        [_dims(o.shape) for o in outputs],
        embedding_size=_embedding_size(inputs, outputs, session),
    )


def find_models(folder: Path) -> PackModels:
    """Every ``.onnx`` file under ``folder`` with its signature; the one recognition model picked out.

    No recognition model, or more than one, is a user error (one line naming the files): kface
    never guesses which of several it should use.
    """
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() == ".onnx")
    if not files:
        raise InputError(
            "the pack holds no .onnx model",
            hint="A pack is a zip of ONNX models (as insightface's buffalo_l.zip), or one .onnx file.",
        )
    signatures = [read_signature(p, folder) for p in files]
    found = [s for s in signatures if s.is_recognition]
    if not found:
        listed = ", ".join(f"{s.file} {s.inputs}" for s in signatures)
        raise InputError(
            f"no face-recognition model in the pack (one input [N, 3, {FACE_SIZE}, {FACE_SIZE}], one [N, D] output); "
            f"it holds {listed}",
            hint="Check that the pack is a face-recognition pack.",
        )
    if len(found) > 1:
        raise InputError(
            f"the pack holds {len(found)} face-recognition models ({', '.join(s.file for s in found)}); kface needs one",
            hint="Fetch the one you want on its own: `kface models get FILE.onnx --name NAME`.",
        )
    return PackModels(found[0], [s for s in signatures if not s.is_recognition])
