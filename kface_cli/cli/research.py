"""Research commands: ``clean`` (sub-center noisy-label cleaning), ``invert`` (faces from embeddings)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from kface_cli import console
from kface_cli.choices import (
    CleanRule,
)
from kface_cli.cli.common import (
    GalleryOpt,
    JsonOpt,
    ModelOpt,
    NetworkOpt,
    SeedOpt,
    WorkdirOpt,
    command,
)
from kface_cli.defaults import (
    CLEAN_ANGLE_DEG,
    CLEAN_MARGIN_DEG,
    CLEAN_SHEET_MAX,
)

# ============================================================================================
# Research: clean (sub-center noisy-label cleaning), invert (faces from embeddings)
# ============================================================================================


@command("clean")
def clean_cmd(
    model: Annotated[
        str | None,
        typer.Argument(
            help="Run trained with --loss subcenter (folder, name or checkpoint.pt) \\[default: the latest run].",
            show_default=False,
        ),
    ] = None,
    data: Annotated[
        Path | None,
        typer.Option(
            "--data",
            help="Its training folder (<id>/*.jpg) \\[default: the folder the run was trained on].",
            show_default=False,
        ),
    ] = None,
    rule: Annotated[
        CleanRule,
        typer.Option(
            "--rule",
            case_sensitive=False,
            help="margin: flag images nearer another identity's dominant sub-center than their own by more than the threshold; angle (the authors'): images farther than the threshold from their own identity's.",
        ),
    ] = CleanRule.MARGIN,
    threshold: Annotated[
        float | None,
        typer.Option(
            "--threshold",
            help=f"The rule's cut in degrees \\[default: margin {CLEAN_MARGIN_DEG:g}, angle {CLEAN_ANGLE_DEG:g} (the authors' drop.py)].",
            show_default=False,
        ),
    ] = None,
    report: Annotated[
        Path | None,
        typer.Option(
            "--report",
            help="Folder for clean.csv and contact_sheet.png \\[default: reports/clean-<run>].",
            show_default=False,
        ),
    ] = None,
    apply_to: Annotated[
        Path | None,
        typer.Option(
            "--apply",
            help="Also write a cleaned copy of the training folder here (hard links; originals untouched).",
            show_default=False,
        ),
    ] = None,
    sheet_max: Annotated[
        int | None,
        typer.Option(
            "--sheet-max",
            help=f"Flagged faces on the contact sheet (0: none) \\[default: {CLEAN_SHEET_MAX}].",
            show_default=False,
        ),
    ] = None,
    json_output: JsonOpt = False,
    workdir: WorkdirOpt = None,
) -> None:
    """Find noisy training labels with sub-center ArcFace: images that sit with another identity's dominant sub-center."""
    from kface_cli.research.clean import clean_run

    result = clean_run(
        model,
        data=data,
        rule=rule,
        threshold=threshold,
        report=report,
        apply_to=apply_to,
        sheet_max=sheet_max,
        workdir=workdir,
    )
    if json_output:
        console.print_json(result.to_json())
        return
    rows = [
        [
            i.identity,
            i.images,
            i.flagged,
            i.dominant_subcenter,
            f"{i.dominant_share:.0%}" + (" (minority)" if i.minority else ""),
            f"{i.median_angle:.1f}",
        ]
        for i in result.identities
    ]
    console.show(
        console.table(
            f"Sub-centers of {result.run} (K={result.subcenters}) on {result.data}",
            ["identity", "images", "flagged", "dominant", "on dominant", "median angle"],
            rows,
            data=(
                ["identity", "images", "flagged", "dominant_subcenter", "dominant_share", "minority", "median_angle"],
                [
                    [
                        i.identity,
                        i.images,
                        i.flagged,
                        i.dominant_subcenter,
                        i.dominant_share,
                        i.minority,
                        i.median_angle,
                    ]
                    for i in result.identities
                ],
            ),
        )
    )
    a = result.angles
    console.show(
        console.table(
            "Angle to the dominant sub-center (degrees)",
            ["from", "to", "images"],
            [[b["from"], b["to"], b["images"]] for b in a["histogram"] if b["images"]],
        ),
        secondary=True,
    )
    minority = [i.identity for i in result.minority_identities()]
    m = a["margin"]
    console.info(
        f"{len(result.flagged)} of {result.images} images flagged ({result.rule} > {result.threshold:g} degrees); "
        f"angle median {a['median']}, 95th percentile {a['p95']}; margin median {m['median']}, 95th percentile {m['p95']}; "
        f"identities with a minority dominant sub-center: {', '.join(minority) or 'none'}"
    )
    console.info(
        f"CSV {result.csv}"
        + (f"; contact sheet {result.contact_sheet}" if result.contact_sheet else "")
        + f" ({result.seconds:.1f} s)"
    )
    if result.applied:
        ap = result.applied
        console.info(
            f"cleaned copy: {ap['out']} ({ap['kept']} images kept, {ap['removed']} removed"
            + ("" if ap["hard_links"] else "; copied, not linked")
            + ")"
        )


@command("invert")
def invert_cmd(
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Image to write (.png or .jpg); with --n, NAME-1.png ... NAME-n.png.")
    ],
    model: ModelOpt = None,
    image: Annotated[
        Path | None, typer.Option("--image", help="Target: the face in this photo or aligned crop.", show_default=False)
    ] = None,
    name: Annotated[
        str | None, typer.Option("--name", help="Target: this person's templates in the gallery.", show_default=False)
    ] = None,
    gallery: GalleryOpt = None,
    embedding: Annotated[
        Path | None,
        typer.Option("--embedding", help="Target: one embedding saved with numpy.save (.npy).", show_default=False),
    ] = None,
    n: Annotated[int, typer.Option("--n", help="Outputs, from seeds SEED ... SEED+n-1.")] = 1,
    steps: Annotated[
        int | None, typer.Option("--steps", help="Optimisation steps per output \\[default: 300].", show_default=False)
    ] = None,
    lr: Annotated[
        float | None,
        typer.Option(
            "--lr", help="Adam learning rate on the pixels, cosine decay \\[default: 0.05].", show_default=False
        ),
    ] = None,
    seed: SeedOpt = 0,
    bn_prior: Annotated[
        bool,
        typer.Option(
            "--bn-prior/--no-bn-prior",
            help="Pull every BatchNorm layer's statistics to the stored ones (the paper's prior).",
        ),
    ] = True,
    network: NetworkOpt = None,
    json_output: JsonOpt = False,
    workdir: WorkdirOpt = None,
) -> None:
    """Generate faces whose embedding matches a face, a gallery identity or a vector (model inversion; torch models only)."""
    from kface_cli.research.invert import invert

    result = invert(
        model, out=out, image=image, name=name, gallery=gallery, embedding=embedding, n=n, steps=steps, lr=lr,
        seed=seed, bn_prior=bn_prior, network=network, workdir=workdir,
    )  # fmt: skip
    if json_output:
        console.print_json(result.to_json())
        return
    rows = [[o["path"], o["seed"], f"{o['cosine']:.3f}"] for o in result.outputs]
    console.show(
        console.table(f"Inverted {result.target}", ["image", "seed", "cosine to target"], rows, justify_numbers=False)
    )
    console.info(
        f"{result.model['network']} {result.model['fingerprint'][:12]}, {result.steps} steps, BatchNorm prior {'on' if result.bn_prior else 'off'}; {result.seconds:.1f} s"
    )
