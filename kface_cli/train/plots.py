"""PNG plots of a run, drawn from its ``log.jsonl``: loss, learning rate, validation accuracy."""

from __future__ import annotations

from pathlib import Path

PLOT_FILES = ("loss.png", "lr.png", "val_accuracy.png")


def write_plots(run_dir: str | Path) -> list[Path]:
    """(Re)draw ``loss.png``, ``lr.png`` and ``val_accuracy.png`` in ``run_dir``; returns the paths."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    from kface_cli.atomic import atomic_path
    from kface_cli.train.loop import read_log

    run_dir = Path(run_dir)
    records = read_log(run_dir)
    steps = [r for r in records if r.get("type") == "step"]
    epochs = [r for r in records if r.get("type") == "epoch"]
    written: list[Path] = []

    def save(fig, name: str) -> None:
        with atomic_path(run_dir / name) as tmp:
            fig.savefig(tmp, dpi=100, bbox_inches="tight")
        plt.close(fig)
        written.append(run_dir / name)

    fig, ax = plt.subplots(figsize=(6, 3.5))
    if steps:
        ax.plot([r["step"] for r in steps], [r["loss"] for r in steps], lw=1, label="training loss (per log interval)")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(f"{run_dir.name}: loss")
    ax.grid(alpha=0.3)
    if steps:
        ax.legend()
    save(fig, "loss.png")

    fig, ax = plt.subplots(figsize=(6, 3.5))
    if steps:
        ax.plot([r["step"] for r in steps], [r["lr"] for r in steps], lw=1)
    ax.set_xlabel("step")
    ax.set_ylabel("learning rate")
    ax.set_title(f"{run_dir.name}: learning rate")
    ax.grid(alpha=0.3)
    save(fig, "lr.png")

    fig, ax = plt.subplots(figsize=(6, 3.5))
    val = [(r["epoch"], r["val"]) for r in epochs if r.get("val") and r["val"].get("accuracy") is not None]
    if val:
        ax.plot([e for e, _ in val], [100 * v["accuracy"] for _, v in val], marker="o", label="10-fold accuracy")
        tar = [(e, v.get("tar_at_far_1e-2")) for e, v in val if v.get("tar_at_far_1e-2") is not None]
        if tar:
            ax.plot([e for e, _ in tar], [100 * t for _, t in tar], marker="s", label="TAR @ FAR 1e-2")
        ax.legend()
    else:
        ax.text(0.5, 0.5, "no validation pairs", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("epoch")
    ax.set_ylabel("%")
    ax.set_title(f"{run_dir.name}: validation")
    ax.grid(alpha=0.3)
    save(fig, "val_accuracy.png")
    return written
