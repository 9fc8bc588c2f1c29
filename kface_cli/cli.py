"""The ``kface`` command: one thin function per subcommand (parse options, call a domain function, print).

Nothing heavy is imported at module level: torch, mediapipe, faiss and h5py are imported inside
the domain functions, so ``kface --help`` stays fast. User errors (:class:`KFaceError`) become one
red line on stderr and exit code 2; ``kface --debug ...`` shows the traceback too.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from kface_cli import console
from kface_cli.errors import KFaceError

app = typer.Typer(
    name="kface",
    help="K-Face to ArcFace: extract, crop, split, train, export, enroll, identify, evaluate.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)

# Shared option aliases (defined once, used by every command) ---------------------------------
WorkdirOpt = Annotated[
    Path | None,
    typer.Option(
        "--workdir",
        "-w",
        help="Workspace folder holding every stage's output \\[default: $KFACE_WORKDIR or .]",
        show_default=False,
    ),
]
JsonOpt = Annotated[
    bool, typer.Option("--json", help="Print the result as JSON on stdout (progress and warnings go to stderr).")
]
ResOpt = Annotated[str, typer.Option("--res", help="K-Face resolution: High, Middle or Low.")]
ModelOpt = Annotated[
    str | None,
    typer.Option(
        "--model",
        "-m",
        help="Run folder, checkpoint, insightface backbone.pth or ONNX file \\[default: best model of the latest run].",
        show_default=False,
    ),
]
NetworkOpt = Annotated[
    str | None,
    typer.Option(
        "--network",
        help="Backbone of a bare backbone.pth (r18, r34, r50, r100, r200, mbf); read from the run when there is one.",
        show_default=False,
    ),
]
SeedOpt = Annotated[int, typer.Option("--seed", help="Random seed (results are reproducible for a given seed).")]


def command(name: str | None = None, **kwargs) -> Callable:
    """Register a subcommand whose user errors print one red line and exit non-zero."""

    def decorator(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def wrapper(*args, **kw):
            saved = dataclasses.replace(console.MODE)
            json_flag = kw.get("json_output")
            if json_flag is not None:
                console.set_mode(json_output=bool(json_flag))
            try:
                return fn(*args, **kw)
            except KFaceError as e:
                if console.MODE.debug:
                    console.err.print_exception()
                console.error(str(e))
                raise typer.Exit(e.exit_code) from None
            except KeyboardInterrupt:
                console.error("interrupted")
                raise typer.Exit(130) from None
            finally:  # an in-process caller (tests, notebooks) gets the output mode it had
                console.set_mode(json_output=saved.json, quiet=saved.quiet, debug=saved.debug)

        return app.command(name, **kwargs)(wrapper)

    return decorator


def _version(value: bool) -> None:
    if value:
        from kface_cli import __version__

        typer.echo(f"kface {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks for errors.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or status lines.")] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """K-Face to ArcFace: from the raw dataset to a working face-identification system."""
    console.set_mode(debug=debug, quiet=quiet, json_output=False)  # each invocation starts afresh


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
    ids: Annotated[int, typer.Option("--ids", "-n", help="Number of synthetic identities.")] = 40,
    seed: SeedOpt = 0,
    res: Annotated[
        str,
        typer.Option(
            "--res",
            help="Resolutions, comma-separated; RES:N writes only the first N identities at RES (e.g. Middle,Low:8,High:2).",
        ),
    ] = "Middle",
    grid: Annotated[
        str,
        typer.Option(
            "--grid",
            help="Images per identity: tutorial (S001 x L1,L3 x E01-E03 x C6-C9: 24), sample (tutorial + dark lights, wider angles, a profile, glasses: 30), full (10,800).",
        ),
    ] = "sample",
    workers: Annotated[int, typer.Option("--workers", "-j", help="Parallel processes (0: one per CPU core).")] = 0,
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
        n_ids=ids,
        seed=seed,
        resolutions=resolutions,
        grid_preset=grid,
        ids_per_resolution=limits,
        workers=workers,
    )
    if json_output:
        console.print_json(result)
        return
    rows = [[r, sum(1 for z in result.zips if z.parent.name == f"{r}_Resolution")] for r in result.resolutions]
    console.show(console.table(f"Synthetic K-Face written to {result.root}", ["resolution", "identity zips"], rows))
    res_flag = "" if "Middle" in result.resolutions else f" --res {result.resolutions[0]}"
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
    res: ResOpt = "Middle",
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
    workers: Annotated[
        int, typer.Option("--workers", "-j", help="Identities extracted in parallel (0: one per CPU core, at most 8).")
    ] = 0,
    json_output: JsonOpt = False,
    workdir: WorkdirOpt = None,
) -> None:
    """Extract the chosen images and annotations from K-Face zips into raw/<Res> (re-runs skip finished work)."""
    from kface_cli.dataset.codes import describe
    from kface_cli.dataset.source import parse_id_list
    from kface_cli.prepare.extract import Selection, extract

    selection = Selection.parse(acc, lux, expr, angle)
    result = extract(source, workdir=workdir, res=res, selection=selection, ids=parse_id_list(ids), workers=workers)
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
            console.table(f"Extracted {result.res} from {result.source}", ["", ""], rows, justify_numbers=False)
        )
        if result.missing_by_code:
            kinds = {"S": "acc", "L": "light", "E": "expr", "C": "cam"}
            miss = [[code, describe(kinds[code[0]], code), n] for code, n in result.missing_by_code.items()]
            shown = miss if len(miss) <= 14 else miss[:13] + [["...", f"{len(miss) - 13} more codes (see --json)", ""]]
            console.show(
                console.table(
                    "Missing images per code (selected but not in the source)", ["code", "meaning", "images"], shown
                )
            )
        if result.failures:
            console.show(
                console.table("Failed identities", ["id", "problem"], [[f["id"], f["error"]] for f in result.failures])
            )
    if result.failed:
        console.error(
            f"{result.failed} of {result.identities} identities failed; the others were extracted. "
            "Replace the damaged zips and run the same command again (finished identities are skipped)."
        )
        raise typer.Exit(1)
    res_flag = "" if result.res == "Middle" else f" --res {result.res}"
    console.info(f"Next: kface crop{res_flag}" + (f" -w {workdir}" if workdir else ""))


@command("crop")
def crop_cmd(
    res: ResOpt = "Middle",
    mode: Annotated[
        str,
        typer.Option(
            "--mode",
            help="align: ArcFace 5-point similarity alignment (profiles fall back to the face box); box: the tutorial's face-box crop.",
        ),
    ] = "align",
    size: Annotated[int, typer.Option("--size", help="Output size in pixels (ArcFace models expect 112).")] = 112,
    margin: Annotated[
        float, typer.Option("--margin", help="box mode: fraction of the face box added on every side.")
    ] = 0.0,
    square: Annotated[
        bool, typer.Option("--square", help="box mode: grow the face box's short side to make it square.")
    ] = False,
    workers: Annotated[
        int, typer.Option("--workers", "-j", help="Parallel threads (0: one per CPU core, at most 8).")
    ] = 0,
    json_output: JsonOpt = False,
    workdir: WorkdirOpt = None,
) -> None:
    """Crop the extracted faces to 112x112 (aligned like insightface) into faces/<Res>, with a manifest."""
    from kface_cli.prepare.crop import CropConfig, crop, parse_mode

    config = CropConfig(mode=parse_mode(mode), size=size, margin=margin, square=square)
    result = crop(workdir, res=res, config=config, workers=workers)
    if json_output:
        console.print_json(result)
        return
    labels = {
        "align": "aligned (5 points -> ArcFace template)",
        "box": "face box",
        "box-fallback": "face box (profile: points degenerate)",
    }
    rows = [[labels.get(m, m), n] for m, n in sorted(result.methods.items())]
    rows += [[f"skipped: {status}", n] for status, n in sorted(result.problems.items())]
    console.show(
        console.table(
            f"Cropped {result.cropped} of {result.images} images ({result.identities} identities) to {result.size}x{result.size}",
            ["", "images"],
            rows,
        )
    )
    for status, examples in result.examples.items():
        for ex in examples:
            console.warn(f"{status}: {ex}")
    res_flag = "" if result.out.name == "Middle" else f" --res {result.out.name}"
    console.info(
        f"faces in {result.out}, manifest {result.manifest} ({result.seconds:.1f} s). "
        f"Next: kface split{res_flag}" + (f" -w {workdir}" if workdir else "")
    )


@command("split")
def split_cmd(
    res: ResOpt = "Middle",
    val_ids: Annotated[
        int | None,
        typer.Option(
            "--val-ids",
            help="Number of validation identities \\[default: 10, or a quarter of a small set].",
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
        str,
        typer.Option(
            "--order",
            help="random: draw val identities with --seed; sorted: the last ones by ID (the tutorial: first 390 of 400 train).",
        ),
    ] = "random",
    max_pairs: Annotated[
        int | None,
        typer.Option(
            "--max-pairs",
            help="Cap on same-identity val pairs (as many different-identity pairs are drawn) \\[default: all].",
            show_default=False,
        ),
    ] = None,
    seed: SeedOpt = 0,
    json_output: JsonOpt = False,
    workdir: WorkdirOpt = None,
) -> None:
    """Split the crops into identity-disjoint train/val folders, classes.csv and val_pairs.csv."""
    from kface_cli.prepare.split import split

    result = split(workdir, res=res, val_ids=val_ids, val_frac=val_frac, seed=seed, order=order, max_pairs=max_pairs)  # type: ignore[arg-type]
    if json_output:
        console.print_json(result)
        return
    rows = [
        ["train", len(result.train_ids), result.train_images, f"{result.out / 'train'}"],
        ["val", len(result.val_ids), result.val_images, f"{result.out / 'val'}"],
    ]
    console.show(
        console.table(
            f"Identity-disjoint split ({result.order}, seed {result.seed})",
            ["part", "identities", "images", "folder"],
            rows,
        )
    )
    console.info(
        f"val pairs: {result.same_pairs} same + {result.diff_pairs} different -> {result.pairs_csv}; "
        f"classes -> {result.classes_csv}; files {'hard-linked' if result.linked else 'copied'}. Next: kface train"
    )


# ============================================================================================
# Models and training: train
# ============================================================================================


def _fmt_num(value: float | None, fmt: str) -> str:
    return "-" if value is None else fmt.format(value)


def _opt(help_text: str, *names: str) -> typer.Option:
    return typer.Option(*names, help=help_text, show_default=False)


@command("train")
def train_cmd(
    data: Annotated[
        Path | None,
        _opt(
            "Identity folders (ROOT/<id>/*.jpg) or a folder with insightface train.rec/train.idx/property \\[default: split/train].",
            "--data",
        ),
    ] = None,
    network: Annotated[
        str | None,
        _opt(
            "Backbone: r18, r34, r50, r100, r200, mbf, mbf_small \\[default: that of --init, else r50 on a GPU, mbf_small on a CPU].",
            "--network",
        ),
    ] = None,
    loss: Annotated[
        str | None,
        _opt(
            "arcface, cosface, sphereface, combined, subcenter, softmax or normsoftmax \\[default: arcface].", "--loss"
        ),
    ] = None,
    margin: Annotated[
        str | None,
        _opt(
            "Margin: one value (ArcFace m, CosFace m, SphereFace m) or m1,m2,m3 for combined \\[default: the loss's own, e.g. 0.5].",
            "--margin",
        ),
    ] = None,
    scale: Annotated[float | None, _opt("Logit scale s \\[default: 64].", "--scale")] = None,
    subcenters: Annotated[
        int | None,
        _opt("Sub-centres K per class (sub-center ArcFace) \\[default: 1; 3 with --loss subcenter].", "--subcenters"),
    ] = None,
    embedding_size: Annotated[
        int | None, _opt("Embedding size \\[default: that of --init, else 512].", "--embedding-size")
    ] = None,
    batch_size: Annotated[
        int | None,
        _opt(
            "Images per step and process \\[default: 128 on a GPU, 32 on a CPU, at most a quarter of the data].",
            "--batch-size",
            "-b",
        ),
    ] = None,
    lr: Annotated[
        float | None,
        _opt("Learning rate \\[default: 0.1 x global batch / 1024 but at least 0.02 for sgd, 1e-3 for adamw].", "--lr"),
    ] = None,
    momentum: Annotated[float | None, _opt("SGD momentum \\[default: 0.9].", "--momentum")] = None,
    weight_decay: Annotated[float | None, _opt("Weight decay \\[default: 5e-4].", "--weight-decay")] = None,
    warmup_epochs: Annotated[
        float | None, _opt("Linear warm-up epochs before the polynomial decay \\[default: 0].", "--warmup-epochs")
    ] = None,
    optimizer: Annotated[str | None, _opt("sgd or adamw \\[default: sgd].", "--optimizer")] = None,
    epochs: Annotated[
        int | None, _opt("Epochs \\[default: 20]; with --resume, raise it to train further.", "--epochs", "-e")
    ] = None,
    init: Annotated[
        Path | None, _opt("Start from these backbone weights (insightface backbone.pth or a kface run).", "--init")
    ] = None,
    freeze: Annotated[
        int | None, _opt("Keep the first N stages frozen (1 = the stem) \\[default: 0].", "--freeze")
    ] = None,
    precision: Annotated[
        str | None, _opt("fp32, fp16 or bf16 (layers before fc under autocast) \\[default: fp32].", "--precision")
    ] = None,
    sample_rate: Annotated[
        float | None, _opt("Partial FC: fraction of negative class centres per step \\[default: 1].", "--sample-rate")
    ] = None,
    val_pairs: Annotated[
        str | None,
        _opt("Validation pairs CSV, or 'none' \\[default: split/val_pairs.csv when present].", "--val-pairs"),
    ] = None,
    workers: Annotated[int | None, _opt("DataLoader worker processes \\[default: 2].", "--workers")] = None,
    device: Annotated[str | None, _opt("auto, cpu, cuda, cuda:N \\[default: auto].", "--device")] = None,
    seed: Annotated[int | None, _opt("Random seed \\[default: 0].", "--seed")] = None,
    config: Annotated[
        str | None,
        _opt(
            "TOML file with any of these options (the command line overrides it), or a shipped config: tutorial_r50, demo_mbf.",
            "--config",
            "-c",
        ),
    ] = None,
    name: Annotated[
        str | None, _opt("Run folder runs/<name> \\[default: <network>-<date>-<time>].", "--name", "-n")
    ] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue run --name exactly where it stopped.")] = False,
    json_output: JsonOpt = False,
    workdir: WorkdirOpt = None,
) -> None:
    """Train a backbone with an ArcFace-family loss; runs/<name> gets backbone.pth, checkpoint, log and plots.

    Multi-GPU: torchrun --nproc_per_node N -m kface_cli train ...
    """
    from kface_cli.train.loop import train_from_options

    overrides = dict(
        data=str(data) if data else None,
        network=network,
        loss=loss,
        margin=margin,
        scale=scale,
        subcenters=subcenters,
        embedding_size=embedding_size,
        batch_size=batch_size,
        lr=lr,
        momentum=momentum,
        weight_decay=weight_decay,
        warmup_epochs=warmup_epochs,
        optimizer=optimizer,
        epochs=epochs,
        init=str(init) if init else None,
        freeze=freeze,
        precision=precision,
        sample_rate=sample_rate,
        val_pairs=val_pairs,
        workers=workers,
        device=device,
        seed=seed,
        name=name,
        workdir=str(workdir) if workdir else None,
    )
    result = train_from_options(config, overrides, resume=resume)
    if json_output:
        console.print_json(result)
        return
    rows = []
    for r in result.history:
        v = r.get("val") or {}
        rows.append(
            [
                r["epoch"],
                _fmt_num(r.get("loss"), "{:.4f}"),
                _fmt_num(v.get("accuracy"), "{:.2%}"),
                _fmt_num(v.get("threshold"), "{:.2f}"),
                _fmt_num(v.get("tar_at_far_1e-2"), "{:.2%}"),
                _fmt_num(r.get("samples_per_s"), "{:.0f}"),
                "*" if r.get("best") else "",
            ]
        )
    console.show(
        console.table(
            f"{result.network} on {result.num_images} images of {result.num_classes} identities ({result.world_size} x {result.device})",
            ["epoch", "loss", "val acc", "threshold", "TAR@FAR=1e-2", "samples/s", "best"],
            rows,
        )
    )
    best = f"best epoch {result.best_epoch}" + (
        f" (val accuracy {100 * result.best_accuracy:.2f}%)" if result.best_accuracy is not None else ""
    )
    console.info(
        f"{best}; {result.elapsed_s:.0f} s. Run folder {result.run_dir} (backbone.pth, checkpoint.pt, log.jsonl, plots.png). Next: kface export"
    )


# ============================================================================================
# Faces in photos: export
# ============================================================================================


@command("export")
def export_cmd(
    model: Annotated[
        str | None,
        typer.Argument(
            help="Run folder or name, checkpoint.pt or backbone.pth \\[default: the latest run].", show_default=False
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            "-o",
            help="Model file to write \\[default: <run>/model.onnx, or model.pt for torchscript].",
            show_default=False,
        ),
    ] = None,
    fmt: Annotated[
        str,
        typer.Option(
            "--format",
            "-f",
            help="onnx (ONNX Runtime, TensorRT, OpenVINO; insightface-compatible) or torchscript (libtorch).",
        ),
    ] = "onnx",
    opset: Annotated[int, typer.Option("--opset", help="ONNX opset version.")] = 17,
    network: NetworkOpt = None,
    json_output: JsonOpt = False,
    workdir: WorkdirOpt = None,
) -> None:
    """Export a trained model for deployment (input `data` [N,3,112,112], metadata inside), checked against torch."""
    from kface_cli.embedding.export import export_model
    from kface_cli.embedding.loading import resolve_model_path

    if out is None:
        source = resolve_model_path(model, workdir)
        folder = source if source.is_dir() else source.parent
        out = folder / ("model.onnx" if fmt == "onnx" else "model.pt")
    result = export_model(model, out, fmt=fmt, opset=opset, workdir=workdir, network=network)  # type: ignore[arg-type]
    if json_output:
        console.print_json(result.to_dict())
        return
    rows = [
        ["file", str(result.path)],
        ["format", result.format + (f" (opset {result.opset})" if result.opset else "")],
        ["network", result.network],
        ["embedding size", str(result.embedding_size)],
        ["input", "data [N, 3, 112, 112] float32 RGB, (x - 127.5) / 127.5"],
        ["size", f"{result.size_bytes / 1e6:.1f} MB"],
        ["fingerprint", result.fingerprint],
        ["source", str(result.source)],
    ]
    console.show(console.table("Exported model", ["field", "value"], rows, justify_numbers=False))
    console.info(
        f"self-check passed: {result.check_faces} faces, min cosine vs torch {result.min_cosine:.6f} (>= 0.9999), "
        f"max |diff| {result.max_abs_diff:.2e}; {result.seconds:.1f} s"
    )


# ============================================================================================
# Gallery: enroll, identify, gallery
# ============================================================================================

GalleryOpt = Annotated[
    Path | None,
    typer.Option("--gallery", "-g", help="Gallery file \\[default: gallery.h5 in the workspace].", show_default=False),
]
LandmarksOpt = Annotated[
    str,
    typer.Option(
        "--landmarks",
        help="Where the 5 face points come from: auto (K-Face .txt sidecar when present, else the detector), detect, sidecar.",
    ),
]
MinFaceOpt = Annotated[
    int | None,
    typer.Option(
        "--min-face",
        help="Smallest face to look for, in pixels (default: the detector's, which also searches zoomed tiles for small faces); e.g. 64 for webcam frames is several times faster.",
        show_default=False,
    ),
]
IndexOpt = Annotated[
    str,
    typer.Option(
        "--index",
        help="Search index kind: auto (exact up to 50k templates, then IVF), flat (exact), ivf, hnsw; built when the saved one differs.",
    ),
]


def _gallery_path(gallery: Path | None, workdir: Path | None) -> Path:
    from kface_cli.workspace import Workspace

    return gallery if gallery is not None else Workspace.resolve(workdir).gallery


@command("enroll")
def enroll_cmd(
    folder: Annotated[
        Path,
        typer.Argument(
            help="Photos of known people: DIR/<name>.jpg (one each) and/or DIR/<name>/*.jpg (several).",
            show_default=False,
        ),
    ],
    gallery: GalleryOpt = None,
    model: ModelOpt = None,
    network: NetworkOpt = None,
    aligned: Annotated[
        bool,
        typer.Option(
            "--aligned", help="The photos are 112x112 aligned crops (e.g. `kface crop` output): no detection."
        ),
    ] = False,
    per_identity: Annotated[
        str,
        typer.Option(
            "--per-identity", help="Templates kept per person: all (one per photo) or mean (one averaged template)."
        ),
    ] = "all",
    replace: Annotated[
        bool, typer.Option("--replace", help="First remove the existing templates of every person in DIR.")
    ] = False,
    landmarks: LandmarksOpt = "auto",
    min_face: MinFaceOpt = None,
    batch_size: Annotated[
        int,
        typer.Option(
            "--batch-size",
            help="Photos embedded and committed together (an interrupted run keeps every committed batch).",
        ),
    ] = 32,
    json_output: JsonOpt = False,
    workdir: WorkdirOpt = None,
) -> None:
    """Add the faces of known people to the gallery (re-enrolling a photo is a no-op)."""
    from kface_cli.embedding.loading import load_embedder
    from kface_cli.gallery.enroll import enroll_folder, summary_rows
    from kface_cli.workspace import Workspace

    ws = Workspace.resolve(workdir)
    result = enroll_folder(
        folder,
        _gallery_path(gallery, workdir),
        lambda: load_embedder(model, workdir=ws.root, network=network),
        aligned=aligned,
        per_identity=per_identity,
        replace=replace,
        landmarks=landmarks,
        min_face=min_face,
        batch_size=batch_size,
    )
    if json_output:
        console.print_json(result.to_json())
        return
    columns, rows = summary_rows(result)
    console.show(console.table(f"Enrolled into {result.gallery}", columns, rows))
    t = result.totals()
    removed = f", {t['templates_removed']} replaced" if t["templates_removed"] else ""
    console.info(
        f"{t['templates_added']} templates added{removed} from {t['photos']} photos in {result.seconds:.1f} s "
        f"({result.photos_per_second:.1f} photos/s); model {result.model.get('network')} {str(result.model.get('fingerprint'))[:12]}"
    )


@command("identify")
def identify_cmd(
    paths: Annotated[
        list[Path] | None, typer.Argument(help="Photos, folders of photos, or video files.", show_default=False)
    ] = None,
    gallery: GalleryOpt = None,
    model: ModelOpt = None,
    network: NetworkOpt = None,
    threshold: Annotated[
        float | None,
        typer.Option(
            "--threshold",
            "-t",
            help="Squared L2 distance (2 - 2 cos) below which a face is named \\[default: the model's calibrated threshold, else 1.5 = cosine 0.25].",
            show_default=False,
        ),
    ] = None,
    top_k: Annotated[
        int, typer.Option("--top-k", "-k", help="Identities listed per face (the best and the next candidates).")
    ] = 3,
    every: Annotated[int, typer.Option("--every", help="Videos and camera: use one frame in N.")] = 1,
    camera: Annotated[
        int | None,
        typer.Option(
            "--camera", help="Read frames from this webcam (e.g. 0) until Ctrl-C or --max-frames.", show_default=False
        ),
    ] = None,
    max_frames: Annotated[
        int | None,
        typer.Option("--max-frames", help="Stop after this many frames (camera or videos).", show_default=False),
    ] = None,
    aligned: Annotated[
        bool, typer.Option("--aligned", help="The inputs are 112x112 aligned crops: no detection.")
    ] = False,
    landmarks: LandmarksOpt = "auto",
    min_face: MinFaceOpt = None,
    index: IndexOpt = "auto",
    csv_path: Annotated[
        Path | None, typer.Option("--csv", help="Also write one row per face to this CSV file.", show_default=False)
    ] = None,
    annotate: Annotated[
        Path | None,
        typer.Option(
            "--annotate",
            help="Write copies of the images with boxes and names drawn into this folder.",
            show_default=False,
        ),
    ] = None,
    fail_unknown: Annotated[
        bool, typer.Option("--fail-unknown", help="Exit with code 1 when no face matched anyone in the gallery.")
    ] = False,
    json_output: JsonOpt = False,
    workdir: WorkdirOpt = None,
) -> None:
    """Name the faces in photos, videos or a webcam (exit 0; 1 with --fail-unknown when nobody matched; 2 on errors)."""
    from kface_cli.embedding.loading import load_embedder
    from kface_cli.errors import InputError
    from kface_cli.gallery.identify import identify, table_rows, write_csv
    from kface_cli.workspace import Workspace

    if camera is None and not paths:
        raise InputError("nothing to identify", hint="Pass photos, folders or videos, or --camera 0.")
    if camera is not None and paths:
        raise InputError("pass either photos/videos or --camera, not both")
    ws = Workspace.resolve(workdir)
    result = identify(
        paths or [],
        _gallery_path(gallery, workdir),
        lambda: load_embedder(model, workdir=ws.root, network=network),
        threshold=threshold,
        top_k=top_k,
        every=every,
        camera=camera,
        max_frames=max_frames,
        aligned=aligned,
        landmarks=landmarks,
        min_face=min_face,
        index_kind=index,
        annotate=annotate,
    )
    if csv_path is not None:
        write_csv(result, csv_path)
    if json_output:
        console.print_json(result.to_json())
    else:
        columns, rows = table_rows(result)
        console.show(
            console.table(f"Faces (threshold {result.threshold:.3f}, {result.threshold_source})", columns, rows)
        )
        named = sum(1 for i in result.images for f in i.faces if f.name != "unknown")
        console.info(
            f"{result.faces} faces in {len(result.images)} images, {named} named, in {result.seconds:.2f} s; "
            f"index {result.index['kind']} over {result.index['templates']:,} templates"
            + (f"; annotated images in {annotate}" if annotate is not None else "")
        )
    if fail_unknown and not result.matched_any():
        raise typer.Exit(1)


@command("gallery")
def gallery_cmd(
    gallery: GalleryOpt = None,
    remove: Annotated[
        list[str] | None,
        typer.Option("--remove", help="Remove every template of this person (repeatable).", show_default=False),
    ] = None,
    rebuild_index: Annotated[
        bool,
        typer.Option(
            "--rebuild-index", help="Rebuild the search index now (it is also rebuilt automatically when stale)."
        ),
    ] = False,
    index: IndexOpt = "auto",
    check: Annotated[
        bool,
        typer.Option(
            "--check",
            help="Verify every name and embedding against the digest written with them (reads the whole file).",
        ),
    ] = False,
    json_output: JsonOpt = False,
    workdir: WorkdirOpt = None,
) -> None:
    """Show the gallery: its facts and identities with template counts; remove people; rebuild the index; check it."""
    from kface_cli.gallery.manage import manage_gallery

    report = manage_gallery(
        _gallery_path(gallery, workdir), remove=remove or [], rebuild_index=rebuild_index, index_kind=index, check=check
    )
    if json_output:
        console.print_json(report)
        return
    for name, n in report["removed"].items():
        console.info(f"removed {n} templates of {name}")
    if "check" in report:
        c = report["check"]
        console.info(
            f"checked {c['rows checked']:,} of {c['templates']:,} templates: intact"
            if c["verified"]
            else "no digest to check against (written by an older kface; the next write adds one)"
        )
    if report["index"].get("rebuilt"):
        console.info(f"rebuilt the {report['index']['kind']} search index over {report['index']['count']:,} templates")
    facts = report["facts"]
    console.show(
        console.table(
            f"Gallery {facts['path']}",
            ["fact", "value"],
            [[k, str(v)] for k, v in facts.items() if k != "path"],
            justify_numbers=False,
        )
    )
    console.show(
        console.table(
            "Identities", ["identity", "templates"], [[i["name"], i["templates"]] for i in report["identities"]]
        )
    )


# ============================================================================================
# Evaluation: evaluate
# ============================================================================================


@command("evaluate")
def evaluate_cmd(
    model: ModelOpt = None,
    network: NetworkOpt = None,
    pairs: Annotated[
        Path | None,
        typer.Option(
            "--pairs", help="Pairs CSV (path1,path2,same[,codes]) \\[default: split/val_pairs.csv].", show_default=False
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
        bool | None,
        typer.Option(
            "--flip/--no-flip",
            help="Flip-sum embeddings as in insightface's protocol (2x compute) \\[default: on; off with --save-threshold, to match `kface identify`].",
            show_default=False,
        ),
    ] = None,
    target_far: Annotated[
        float | None,
        typer.Option(
            "--target-far",
            help="Report the squared-L2 threshold whose FAR on these pairs is at most this (e.g. 1e-3).",
            show_default=False,
        ),
    ] = None,
    save_threshold: Annotated[
        bool,
        typer.Option(
            "--save-threshold",
            help="Store that threshold beside the model (best-accuracy threshold without --target-far); `kface identify` uses it.",
        ),
    ] = False,
    name: Annotated[
        str | None,
        typer.Option(
            "--name", help="Report folder name under reports/ \\[default: <model>-<protocol>].", show_default=False
        ),
    ] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Faces per forward pass.", min=1)] = 64,
    conditions: Annotated[
        bool,
        typer.Option(
            "--conditions/--no-conditions", help="Show the per-condition (light, expression, camera, accessory) table."
        ),
    ] = True,
    workdir: WorkdirOpt = None,
    json_output: JsonOpt = False,
) -> None:
    """Verification and identification metrics, by K-Face condition, with a report folder and plots."""
    from kface_cli.evaluate.evaluation import EvaluateOptions, evaluate
    from kface_cli.evaluate.report import condition_table, summary_rows

    result = evaluate(
        EvaluateOptions(
            model=model, workdir=workdir, network=network, flip=flip, pairs=pairs, lfw_pairs=lfw_pairs, root=root,
            bin_file=bin_file, gallery_dir=gallery_dir, probe_dir=probe_dir, target_far=target_far,
            save_threshold=save_threshold, name=name, batch_size=batch_size,
        )
    )  # fmt: skip
    if json_output:
        console.print_json(result.summary)
        return
    model_info = result.summary.get("model") or {}
    console.show(
        console.table(
            f"Evaluation: {model_info.get('network', '')} ({result.summary['protocol']})",
            ["metric", "value", "note"],
            summary_rows(result.summary),
        )
    )
    title, columns, rows = condition_table(result.summary.get("per_condition"))
    if conditions and rows:
        console.show(console.table(title, columns, rows))
    if result.report_dir is not None:
        console.show(f"Report: {result.report_dir}")


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
    threshold: Annotated[
        float | None,
        typer.Option(
            "--threshold",
            help="Flag images farther than this angle (degrees) from their identity's dominant sub-center \\[default: 77, the paper's].",
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
            "--sheet-max", help="Flagged faces on the contact sheet (0: none) \\[default: 30].", show_default=False
        ),
    ] = None,
    json_output: JsonOpt = False,
    workdir: WorkdirOpt = None,
) -> None:
    """Find noisy training labels with sub-center ArcFace: images far from their identity's dominant sub-center."""
    from kface_cli.research.clean import clean_run

    result = clean_run(
        model, data=data, threshold=threshold, report=report, apply_to=apply_to, sheet_max=sheet_max, workdir=workdir
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
        )
    )
    a = result.angles
    console.show(
        console.table(
            "Angle to the dominant sub-center (degrees)",
            ["from", "to", "images"],
            [[b["from"], b["to"], b["images"]] for b in a["histogram"] if b["images"]],
        )
    )
    minority = [i.identity for i in result.minority_identities()]
    console.info(
        f"{len(result.flagged)} of {result.images} images flagged (angle > {result.threshold:g} degrees; median {a['median']}, "
        f"95th percentile {a['p95']}); identities with a minority dominant sub-center: {', '.join(minority) or 'none'}"
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


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except KFaceError as e:  # raised outside a command (e.g. in a callback)
        console.error(str(e))
        sys.exit(e.exit_code)
