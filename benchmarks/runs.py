"""Run folders the benchmarks train and reuse (not a benchmark itself)."""

from __future__ import annotations

import json
from pathlib import Path


def finished(run_dir: Path) -> bool:
    """Whether a run ended: its log holds the "end" record. ``backbone.pth`` alone is not enough:
    training writes it at every best epoch, so an interrupted run has one too."""
    log = run_dir / "log.jsonl"
    if not (run_dir / "backbone.pth").is_file() or not log.is_file():
        return False
    for line in log.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line).get("type") == "end":
                return True
        except (json.JSONDecodeError, AttributeError):
            continue
    return False
