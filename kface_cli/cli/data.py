"""The data stage's commands: ``sample-data``, ``extract``, ``crop``, ``split``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from kface_cli import console
from kface_cli.choices import (
    CropMode,
    GridPreset,
    LandmarkMode,
    SplitOrder,
)
from kface_cli.cli.common import (
    JobsDeprecatedOpt,
    JobsOpt,
    JsonOpt,
    LandmarksOpt,
    ResOpt,
    SeedOpt,
    WorkdirOpt,
    command,
    deprecated,
    record_data,
)
from kface_cli.defaults import (
    DEFAULT_VAL_IDS,
    FACE_SIZE,
    SAMPLE_IDENTITIES,
)
from kface_cli.workspace import DEFAULT_RESOLUTION

# ============================================================================================
# Data stage: sample-data, extract, crop, split
# ============================================================================================


@command("sample-data")
def sample_data_cmd(
    out: Annotated[
        Path | None,
        typer.Argument(
            help="Folder to write the K-Face tree to \\[default: <workdir>/source, where `kface extract` looks].",
            show_default=False,
        ),
    ] = None,
    identities: Annotated[
        int, typer.Option("--identities", "-n", help="Number of synthetic identities.", min=1)
    ] = SAMPLE_IDENTITIES,
    ids_deprecated: Annotated[
        int | None, typer.Option("--ids", hidden=True, help="Deprecated: --identities.", show_default=False)
    ] = None,
    seed: SeedOpt = 0,
    res: Annotated[
        str,
        typer.Option(
            "--res",
            help="Resolutions, comma-separated; RES:N writes only the first N identities at RES (e.g. Middle,Low:8,High:2).",
        ),
    ] = DEFAULT_RESOLUTION,
    grid: Annotated[
        GridPreset,
        typer.Option(
            "--grid",
            case_sensitive=False,
            help="Images per identity: tutorial (S001 x L1,L3 x E01-E03 x C6-C9: 24), sample (tutorial + dark lights, wider angles, a profile, glasses: 30), full (10,800).",
        ),
    ] = GridPreset.SAMPLE,
    jobs: JobsOpt = 0,
    workers_deprecated: JobsDeprecatedOpt = None,
    json_output: JsonOpt = False,
    workdir: WorkdirOpt = None,
) -> None:
    """Generate synthetic identities in K-Face's exact layout (zips, image sizes, annotations)."""
    from kface_cli.prepare.extract import default_source
    from kface_cli.synth.generator import generate_sample_data, parse_resolution_limits

    resolutions, limits = parse_resolution_limits(res)
    target = out if out is not None else default_source(workdir)
    result = generate_sample_data(
        target,
        n_ids=deprecated("--ids", "--identities (-n)", ids_deprecated, identities),
        seed=seed,
        resolutions=resolutions,
        grid_preset=grid,
        ids_per_resolution=limits,
        workers=deprecated("--workers", "--jobs (-j)", workers_deprecated, jobs),
    )
    if json_output:
        console.print_json(result)
        return
    rows = [[r, sum(1 for z in result.zips if z.parent.name == f"{r}_Resolution")] for r in result.resolutions]
    console.show(console.table(f"Synthetic K-Face written to {result.root}", ["resolution", "identity zips"], rows))
    res_flag = "" if DEFAULT_RESOLUTION in result.resolutions else f" --res {result.resolutions[0]}"
    next_cmd = (
        f"kface extract{res_flag}" + (f" -w {workdir}" if workdir else "")
        if out is None
        else f"kface extract {result.root}{res_flag}"
    )
    console.info(
        f"{result.identities} identities, {result.images} images ({result.grid} grid, seed {result.seed}), "
        f"{result.bytes / 1e6:.1f} MB. Next: {next_cmd}"
    )


@command("extract")
def extract_cmd(
    source: Annotated[
        Path | None,
        typer.Argument(
            help="K-Face folder holding <Res>_Resolution/ with <ID>.zip files or unpacked <ID>/ folders \\[default: <workdir>/source].",
            show_default=False,
        ),
    ] = None,
    res: ResOpt = DEFAULT_RESOLUTION,
    acc: Annotated[
        str | None,
        typer.Option("--acc", help="Accessories, e.g. S001 or S001-S003 \\[default: S001].", show_default=False),
    ] = None,
    lux: Annotated[
        str | None, typer.Option("--lux", help="Lights, e.g. L1,L3 or L1-L7 \\[default: L1,L3].", show_default=False)
    ] = None,
    expr: Annotated[
        str | None, typer.Option("--expr", help="Expressions, e.g. E01-E03 \\[default: E01-E03].", show_default=False)
    ] = None,
    angle: Annotated[
        str | None,
        typer.Option("--angle", help="Cameras, e.g. C6-C9 or C1,C7,C13 \\[default: C6-C9].", show_default=False),
    ] = None,
    ids: Annotated[
        str | None,
        typer.Option(
            "--ids",
            help="Only these identities: comma-separated IDs, or a file with one ID per line \\[default: all].",
            show_default=False,
        ),
    ] = None,
    jobs: JobsOpt = 0,
    workers_deprecated: JobsDeprecatedOpt = None,
    json_output: JsonOpt = False,
    workdir: WorkdirOpt = None,
) -> None:
    """Extract the chosen images and annotations from K-Face zips into raw/<Res> (re-runs skip finished work)."""
    from kface_cli.dataset.codes import describe
    from kface_cli.dataset.source import parse_id_list
    from kface_cli.prepare.extract import Selection, extract

    selection = Selection.parse(acc, lux, expr, angle)
    result = extract(
        source,
        workdir=workdir,
        res=res,
        selection=selection,
        ids=parse_id_list(ids),
        workers=deprecated("--workers", "--jobs (-j)", workers_deprecated, jobs),
    )
    if json_output:
        console.print_json(result)
    else:
        rows = [
            [
                "identities",
                f"{result.identities} ({result.extracted} extracted, {result.skipped} already complete, {result.failed} failed)",
            ],
            [
                "images",
                f"{result.images} ({len(selection)} per identity selected; {result.written} files written this run)",
            ],
            [
                "annotations",
                f"{result.annotations}"
                + (f" ({result.missing_annotations} missing)" if result.missing_annotations else ""),
            ],
            ["missing images", str(result.missing_images)],
            ["output", str(result.out)],
            ["time", f"{result.seconds:.1f} s"],
        ]
        console.show(
            console.table(
                f"Extracted {result.res} from {result.source}",
                ["", ""],
                rows,
                justify_numbers=False,
                data=record_data(console.json_result(result)),
            )
        )
        if result.missing_by_code:
            miss = [[code, describe(code[0], code), n] for code, n in result.missing_by_code.items()]
            shown = miss if len(miss) <= 14 else miss[:13] + [["...", f"{len(miss) - 13} more codes (see --json)", ""]]
            console.show(
                console.table(
                    "Missing images per code (selected but not in the source)", ["code", "meaning", "images"], shown
                ),
                secondary=True,
            )
        if result.failures:
            console.show(
                console.table("Failed identities", ["id", "problem"], [[f["id"], f["error"]] for f in result.failures]),
                secondary=True,
            )
    if result.failed:
        console.error(
            f"{result.failed} of {result.identities} identities failed; the others were extracted. "
            "Fix or replace the zips named above and run the same command again (finished identities are skipped)."
        )
        raise typer.Exit(1)
    res_flag = "" if result.res == DEFAULT_RESOLUTION else f" --res {result.res}"
    console.info(f"Next: kface crop{res_flag}" + (f" -w {workdir}" if workdir else ""))


@command(
    "crop",
    help=f"Crop the extracted faces to {FACE_SIZE}x{FACE_SIZE} (aligned like insightface) into faces/<Res>, with a manifest.",
)
def crop_cmd(
    source: Annotated[
        Path | None,
        typer.Argument(
            help="A K-Face extraction, or any folder of people's photos: SRC/<name>/**/*.jpg and/or SRC/<name>.jpg, as `kface enroll` reads \\[default: raw/<Res>].",
            show_default=False,
        ),
    ] = None,
    res: ResOpt = DEFAULT_RESOLUTION,
    landmarks: LandmarksOpt = LandmarkMode.AUTO,
    mode: Annotated[
        CropMode,
        typer.Option(
            "--mode",
            case_sensitive=False,
            help="align: ArcFace 5-point similarity alignment (profiles fall back to the face box); box: the tutorial's face-box crop.",
        ),
    ] = CropMode.ALIGN,
    size: Annotated[
        int, typer.Option("--size", help=f"Output size in pixels (ArcFace models expect {FACE_SIZE}).")
    ] = FACE_SIZE,
    box_margin: Annotated[
        float, typer.Option("--box-margin", help="box mode: fraction of the face box added on every side.")
    ] = 0.0,
    margin_deprecated: Annotated[
        float | None, typer.Option("--margin", hidden=True, help="Deprecated: --box-margin.", show_default=False)
    ] = None,
    square: Annotated[
        bool, typer.Option("--square", help="box mode: grow the face box's short side to make it square.")
    ] = False,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="Output folder \\[default: faces/<Res>, or faces/<SRC folder name> for other photos].",
            show_default=False,
        ),
    ] = None,
    jobs: JobsOpt = 0,
    workers_deprecated: JobsDeprecatedOpt = None,
    json_output: JsonOpt = False,
    workdir: WorkdirOpt = None,
) -> None:
    """Crop photos to aligned faces with a manifest: a K-Face extraction, or your own photos (SRC/<name>/*.jpg)."""
    from kface_cli.prepare.crop import CropConfig, crop

    margin = deprecated("--margin", "--box-margin", margin_deprecated, box_margin)
    config = CropConfig(mode=mode, size=size, margin=margin, square=square, landmarks=landmarks)
    result = crop(
        workdir,
        res=res,
        config=config,
        raw_dir=source,
        out_dir=out,
        workers=deprecated("--workers", "--jobs (-j)", workers_deprecated, jobs),
    )
    if json_output:
        console.print_json(result)
        return
    labels = {
        "align": "aligned (5 points -> ArcFace template)",
        "box": "face box",
        "box-fallback": "face box (profile: points degenerate)",
    }
    rows = [[labels.get(m, m), n] for m, n in sorted(result.methods.items())]
    rows += [[f"landmarks: {src}", n] for src, n in sorted(result.landmark_sources.items())]
    if result.several_faces:
        rows.append(["several faces (largest used)", result.several_faces])
    rows += [[f"skipped: {status}", n] for status, n in sorted(result.problems.items())]
    if result.resumed:
        rows.append(["already cropped (skipped)", result.resumed])
    console.show(
        console.table(
            f"Cropped {result.cropped} of {result.images} images ({result.identities} identities) to {result.size}x{result.size}",
            ["", "images"],
            rows,
            data=record_data(
                {k: v for k, v in console.json_result(result).items() if k not in ("by_camera", "examples")}
            ),
        )
    )
    outcomes = sorted({k for c in result.by_camera.values() for k in c})
    if len(outcomes) > 1:
        cam_rows = [[cam, *(c.get(k, 0) for k in outcomes)] for cam, c in result.by_camera.items()]
        console.show(console.table("Landmarks by camera", ["camera", *outcomes], cam_rows), secondary=True)
    for status, examples in result.examples.items():
        for ex in examples:
            console.warn(f"{status}: {ex}")
    if result.kind == "kface":
        nxt = "kface split" + ("" if result.out.name == DEFAULT_RESOLUTION else f" --res {result.out.name}")
    else:
        nxt = f"kface split --faces {result.out}"
    console.info(
        f"faces in {result.out}, manifest {result.manifest} ({result.seconds:.1f} s). "
        f"Next: {nxt}" + (f" -w {workdir}" if workdir else "")
    )


@command("split")
def split_cmd(
    res: ResOpt = DEFAULT_RESOLUTION,
    val_ids: Annotated[
        int | None,
        typer.Option(
            "--val-ids",
            help=f"Number of validation identities \\[default: {DEFAULT_VAL_IDS}, or a quarter of a small set].",
            show_default=False,
        ),
    ] = None,
    val_frac: Annotated[
        float | None,
        typer.Option(
            "--val-frac", help="Fraction of identities for validation (instead of --val-ids).", show_default=False
        ),
    ] = None,
    order: Annotated[
        SplitOrder,
        typer.Option(
            "--order",
            case_sensitive=False,
            help="random: draw val identities with --seed; sorted: the last ones by ID (the tutorial: first 390 of 400 train).",
        ),
    ] = SplitOrder.RANDOM,
    test_ids: Annotated[
        int | None,
        typer.Option(
            "--test-ids",
            help="Hold out this many test identities, seen by no choice (best epoch, thresholds: those use val); `kface evaluate` reports on them \\[default: no test part].",
            show_default=False,
        ),
    ] = None,
    test_frac: Annotated[
        float | None,
        typer.Option(
            "--test-frac", help="Fraction of identities for the test part (instead of --test-ids).", show_default=False
        ),
    ] = None,
    max_pairs: Annotated[
        int | None,
        typer.Option(
            "--max-pairs",
            help="Cap on same-identity val (and test) pairs (as many different-identity pairs are drawn) \\[default: all].",
            show_default=False,
        ),
    ] = None,
    seed: SeedOpt = 0,
    faces: Annotated[
        Path | None,
        typer.Option(
            "--faces",
            help="Crop folder to split (e.g. faces/<name> from `kface crop SRC`) \\[default: faces/<Res>].",
            show_default=False,
        ),
    ] = None,
    json_output: JsonOpt = False,
    workdir: WorkdirOpt = None,
) -> None:
    """Split the crops into identity-disjoint train/val(/test) folders, classes.csv and val_pairs.csv (test_pairs.csv)."""
    from kface_cli.prepare.split import split

    result = split(
        workdir,
        res=res,
        faces_dir=faces,
        val_ids=val_ids,
        val_frac=val_frac,
        seed=seed,
        order=order,
        max_pairs=max_pairs,
        test_ids=test_ids,
        test_frac=test_frac,
    )
    if json_output:
        console.print_json(result)
        return
    rows = [
        ["train", len(result.train_ids), result.train_images, f"{result.out / 'train'}"],
        ["val", len(result.val_ids), result.val_images, f"{result.out / 'val'}"],
    ]
    if result.test_ids:
        rows.append(["test", len(result.test_ids), result.test_images, f"{result.out / 'test'}"])
    console.show(
        console.table(
            f"Identity-disjoint split ({result.order}, seed {result.seed})",
            ["part", "identities", "images", "folder"],
            rows,
        )
    )
    console.info(
        f"val pairs: {result.same_pairs} same + {result.diff_pairs} different -> {result.pairs_csv}; "
        + (
            f"test pairs: {result.test_same_pairs} same + {result.test_diff_pairs} different -> {result.test_pairs_csv}; "
            if result.test_ids
            else ""
        )
        + f"classes -> {result.classes_csv}; files {'hard-linked' if result.linked else 'copied'}. Next: kface train"
    )
