"""``kface evaluate``: verification and identification benchmarks of a model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from kface_cli import console
from kface_cli.choices import (
    LandmarkMode,
    SplitPart,
)
from kface_cli.cli.common import (
    AlignedOpt,
    EmbedBatchOpt,
    JsonOpt,
    ModelOpt,
    NetworkOpt,
    TrustModelOpt,
    WorkdirOpt,
    command,
    deprecated,
    record_data,
)
from kface_cli.defaults import (
    EMBED_BATCH_SIZE,
)

# ============================================================================================
# Evaluation: evaluate
# ============================================================================================


@command("evaluate")
def evaluate_cmd(
    model: ModelOpt = None,
    network: NetworkOpt = None,
    split_part: Annotated[
        SplitPart | None,
        typer.Option(
            "--split",
            case_sensitive=False,
            help="Part of the workspace split to report on; on test, thresholds are chosen on val and measured again on test \\[default: test when `kface split --test-ids` made one, else val].",
            show_default=False,
        ),
    ] = None,
    trust_model: TrustModelOpt = False,
    pairs: Annotated[
        Path | None,
        typer.Option(
            "--pairs",
            help="Pairs CSV (path1,path2,same[,codes]) \\[default: the workspace split's pairs].",
            show_default=False,
        ),
    ] = None,
    lfw_pairs: Annotated[
        Path | None, typer.Option("--lfw-pairs", help="LFW-style pairs.txt (needs --root).", show_default=False)
    ] = None,
    root: Annotated[
        Path | None,
        typer.Option("--root", help="Image folder for --lfw-pairs: <root>/<name>/<name>_0001.jpg.", show_default=False),
    ] = None,
    bin_file: Annotated[
        Path | None,
        typer.Option(
            "--bin", help="insightface verification .bin (lfw.bin, cfp_fp.bin, agedb_30.bin).", show_default=False
        ),
    ] = None,
    gallery_dir: Annotated[
        Path | None,
        typer.Option(
            "--gallery-dir", help="Identification gallery: one sub-folder of images per identity.", show_default=False
        ),
    ] = None,
    probe_dir: Annotated[
        Path | None,
        typer.Option(
            "--probe-dir",
            help="Identification probes, one sub-folder per identity; identities absent from the gallery are the open-set unknowns.",
            show_default=False,
        ),
    ] = None,
    flip: Annotated[
        bool,
        typer.Option(
            "--flip/--no-flip",
            help="Flip-sum embeddings for the metrics, as in insightface's protocol (2x compute). Thresholds are always calibrated without flip, as `kface identify` embeds.",
        ),
    ] = True,
    target_far: Annotated[
        float | None,
        typer.Option(
            "--target-far",
            help="Calibrate the 1:1 (verification) threshold: the largest whose false accept rate on these pairs is at most this (e.g. 1e-3).",
            show_default=False,
        ),
    ] = None,
    target_fpir: Annotated[
        float | None,
        typer.Option(
            "--target-fpir",
            help="Calibrate the 1:N (identification) threshold: the largest at which at most this share of probes of people not enrolled get a name (e.g. 1e-2). Needs a gallery and probes (val split, or --gallery-dir/--probe-dir).",
            show_default=False,
        ),
    ] = None,
    save_threshold: Annotated[
        bool,
        typer.Option(
            "--save-threshold",
            help="Store the calibrated thresholds beside the model for `kface identify` (1:N first, else 1:1); alone: the best-accuracy 1:1 threshold.",
        ),
    ] = False,
    replace_threshold: Annotated[
        bool,
        typer.Option(
            "--replace-threshold",
            help="Save even over a calibration founded on more pairs or probes (otherwise it is kept and this one is not saved).",
        ),
    ] = False,
    name: Annotated[
        str | None,
        typer.Option(
            "--name", help="Report folder name under reports/ \\[default: <model>-<protocol>].", show_default=False
        ),
    ] = None,
    embed_batch: EmbedBatchOpt = EMBED_BATCH_SIZE,
    batch_size_deprecated: Annotated[
        int | None, typer.Option("--batch-size", hidden=True, help="Deprecated: --embed-batch.", show_default=False)
    ] = None,
    landmarks: Annotated[
        LandmarkMode | None,
        typer.Option(
            "--landmarks",
            case_sensitive=False,
            help="Align the val split's faces again from their source photos: detect (accuracy as deployed), annotation or auto; other photos: where their points come from \\[default: the aligned crops as they are].",
            show_default=False,
        ),
    ] = None,
    conditions: Annotated[
        bool,
        typer.Option(
            "--conditions/--no-conditions", help="Show the per-condition (light, expression, camera, accessory) table."
        ),
    ] = True,
    aligned: AlignedOpt = False,
    workdir: WorkdirOpt = None,
    json_output: JsonOpt = False,
) -> None:
    """Verification and identification metrics, by K-Face condition, with a report folder and plots."""
    from kface_cli.evaluate.evaluation import EvaluateOptions, evaluate
    from kface_cli.evaluate.report import condition_table, landmark_table, summary_rows, summary_title

    result = evaluate(
        EvaluateOptions(
            model=model, workdir=workdir, network=network, split=split_part, trust_model=trust_model, flip=flip, pairs=pairs, lfw_pairs=lfw_pairs, root=root,
            bin_file=bin_file, gallery_dir=gallery_dir, probe_dir=probe_dir, target_far=target_far,
            target_fpir=target_fpir, save_threshold=save_threshold, replace_threshold=replace_threshold, name=name,
            landmarks=landmarks, batch_size=deprecated("--batch-size", "--embed-batch", batch_size_deprecated, embed_batch),
            aligned=aligned or None,
        )
    )  # fmt: skip
    if json_output:
        console.print_json(result.summary)
    else:
        summary = {k: v for k, v in result.summary.items() if k not in ("per_condition", "landmarks", "calibration")}
        console.show(
            console.table(
                summary_title(result.summary),
                ["metric", "value", "note"],
                summary_rows(result.summary),
                data=record_data(summary),
            )
        )
        title, columns, rows = condition_table(result.summary.get("per_condition"))
        if conditions and rows:
            console.show(console.table(title, columns, rows), secondary=True)
        detection = landmark_table(result.summary.get("landmarks"))
        if detection is not None:
            console.show(console.table(*detection), secondary=True)
        if result.report_dir is not None:
            console.show(f"Report: {result.report_dir}")
    if any("not_saved" in c for c in (result.summary.get("calibration") or {}).values()):
        raise typer.Exit(1)
