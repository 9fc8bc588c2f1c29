"""Start-up cost of the CLI: `kface --help` vs importing torch, and which heavy modules load.

`kface --help` must not import torch, mediapipe, faiss or h5py (each command imports what it
needs inside its body). This script times `python -m kface_cli --help` and, as the baseline in
the same run, `python -c "import torch"`, and lists any heavy module that the --help path
imported (there should be none).

    python benchmarks/bench_startup.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

HEAVY = ("torch", "mediapipe", "faiss", "h5py", "onnxruntime", "cv2", "matplotlib")
_PROBE = (
    "import sys, contextlib, io\n"
    "from kface_cli.cli import app\n"
    "with contextlib.redirect_stdout(io.StringIO()):\n"
    "    try:\n"
    "        app(['--help'])\n"
    "    except SystemExit:\n"
    "        pass\n"
    f"print(__import__('json').dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))\n"
)


def best_time(cmd: list[str], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    py = sys.executable
    help_s = best_time([py, "-m", "kface_cli", "--help"], args.repeat)
    bare_s = best_time([py, "-c", "pass"], args.repeat)
    torch_s = best_time([py, "-c", "import torch"], args.repeat)
    loaded = json.loads(subprocess.run([py, "-c", _PROBE], check=True, capture_output=True, text=True).stdout)
    print(f"python -c pass:           {bare_s:.3f} s")
    print(f"kface --help:             {help_s:.3f} s")
    print(f"python -c 'import torch': {torch_s:.3f} s (baseline)")
    print(f"kface --help takes {help_s / torch_s:.2f}x the time of importing torch alone")
    print(f"heavy modules imported by --help: {', '.join(loaded) if loaded else 'none'} (checked: {', '.join(HEAVY)})")
    if loaded:
        sys.exit(1)


if __name__ == "__main__":
    main()
