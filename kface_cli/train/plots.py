"""``runs/<name>/plots.png``: training loss, learning rate and validation accuracy, from ``log.jsonl``;
the best epoch (the one ``backbone.pth`` holds) is marked."""

from __future__ import annotations

from pathlib import Path

from kface_cli.workspace import RUN_PLOTS


def write_plots(run_dir: str | Path) -> Path:
    """(Re)draw ``plots.png`` in ``run_dir`` (three panels: loss, learning rate, validation)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    from kface_cli.atomic import atomic_path
    from kface_cli.train.state import read_log

    run_dir = Path(run_dir)
    records = read_log(run_dir)
    steps = [r for r in records if r.get("type") == "step"]
    epochs = [r for r in records if r.get("type") == "epoch"]
    fig, (ax_loss, ax_lr, ax_val) = plt.subplots(1, 3, figsize=(13, 3.6))
    fig.suptitle(run_dir.name)

    if steps:
        ax_loss.plot([r["step"] for r in steps], [r["loss"] for r in steps], lw=1)
        ax_lr.plot([r["step"] for r in steps], [r["lr"] for r in steps], lw=1)
    ax_loss.set(xlabel="step", ylabel="training loss", title="loss")
    ax_lr.set(xlabel="step", ylabel="learning rate", title="learning rate")

    val = [(r["epoch"], r["val"]) for r in epochs if r.get("val") and r["val"].get("accuracy") is not None]
    if val:
        ax_val.plot([e for e, _ in val], [100 * v["accuracy"] for _, v in val], marker="o", label="10-fold accuracy")
        tar = [(e, v["tar"]) for e, v in val if v.get("tar") is not None]
        if tar:
            ax_val.plot([e for e, _ in tar], [100 * t for _, t in tar], marker="s", label="TAR @ FAR 1e-2")
        best = best_epoch(epochs)
        if best is not None:
            acc = 100 * best["val"]["accuracy"]
            ax_val.axvline(best["epoch"], color="tab:red", ls=":", lw=1)
            ax_val.plot(
                [best["epoch"]], [acc], "*", ms=14, color="tab:red", label=f"best: epoch {best['epoch']}, {acc:.2f}%"
            )
        ax_val.xaxis.get_major_locator().set_params(integer=True)
        ax_val.legend(fontsize=8)
    else:
        ax_val.text(0.5, 0.5, "no validation pairs", ha="center", va="center", transform=ax_val.transAxes)
    ax_val.set(xlabel="epoch", ylabel="%", title="validation")
    for ax in (ax_loss, ax_lr, ax_val):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    target = run_dir / RUN_PLOTS
    with atomic_path(target) as tmp:
        fig.savefig(tmp, dpi=80)
    plt.close(fig)
    return target


def best_epoch(epochs: list[dict]) -> dict | None:
    """The epoch record whose weights ``backbone.pth`` holds: the last one marked ``best`` that was
    validated (None when no epoch was validated)."""
    marked = [r for r in epochs if r.get("best") and (r.get("val") or {}).get("accuracy") is not None]
    return marked[-1] if marked else None
