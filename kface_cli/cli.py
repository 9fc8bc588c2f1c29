"""The ``kface`` command: one thin function per subcommand (parse options, call a domain function, print).

Nothing heavy is imported at module level: torch, mediapipe, faiss and h5py are imported inside
the domain functions, so ``kface --help`` stays fast. User errors (:class:`KFaceError`) become one
red line on stderr and exit code 2; ``kface --debug ...`` shows the traceback too.

One option name means one thing in every command: ``-n`` is a count, ``--ids`` a list of K-Face
IDs, ``--jobs``/``-j`` the parallel jobs of a data stage (0: one per core), ``--workers`` the
DataLoader workers of training, ``--batch-size`` the training batch, ``--embed-batch`` faces per
forward pass, ``--model``/``-m`` the model. The global flags ``--json``, ``--quiet``/``-q`` and
``--debug`` work before or after the command name; renamed options keep their old spelling as a
hidden alias that warns.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from kface_cli import console
from kface_cli.choices import (
    CleanRule,
    CropMode,
    ExportFormat,
    GridPreset,
    IndexKind,
    LandmarkMode,
    OutputFormat,
    PerIdentity,
    SplitOrder,
)
from kface_cli.defaults import (
    AUTO_FLAT_MAX,
    CLEAN_ANGLE_DEG,
    CLEAN_MARGIN_DEG,
    CLEAN_SHEET_MAX,
    DEFAULT_OPSET,
    DEFAULT_THRESHOLD,
    DEFAULT_THRESHOLD_COSINE,
    DEFAULT_TOP_K,
    DEFAULT_VAL_IDS,
    EMBED_BATCH_SIZE,
    ENROLL_BATCH_SIZE,
    FACE_SIZE,
    MAX_AUTO_WORKERS,
    SAMPLE_IDENTITIES,
)
from kface_cli.errors import KFaceError
from kface_cli.workspace import DEFAULT_RESOLUTION, GALLERY_FILE, RESOLUTIONS, RUN_ONNX, RUN_TORCHSCRIPT

app = typer.Typer(
    name="kface",
    help="K-Face to ArcFace: extract, crop, split, train, export, enroll, identify, evaluate.",
    no_args_is_help=True,
    add_completion=True,
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
    bool,
    typer.Option(
        "--json", help="Print the result as JSON on stdout, same as --format json (progress and warnings go to stderr)."
    ),
]
FormatOpt = Annotated[
    OutputFormat | None,
    typer.Option(
        "--format",
        help="Result format (JSON follows the schema in README.md) \\[default: table].",
        show_default=False,
    ),
]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or status lines.")]
DebugOpt = Annotated[bool, typer.Option("--debug", help="Show full tracebacks for errors.")]
ResOpt = Annotated[
    str,
    typer.Option(
        "--res", metavar=f"<{'|'.join(RESOLUTIONS)}>", help=f"K-Face resolution (any case): {', '.join(RESOLUTIONS)}."
    ),
]
JobsOpt = Annotated[
    int,
    typer.Option("--jobs", "-j", help=f"Parallel jobs (0: one per CPU core, at most {MAX_AUTO_WORKERS}).", min=0),
]
JobsDeprecatedOpt = Annotated[
    int | None, typer.Option("--workers", hidden=True, help="Deprecated: --jobs.", show_default=False)
]
EmbedBatchOpt = Annotated[
    int, typer.Option("--embed-batch", help="Faces per forward pass of the model (memory vs speed).", min=1)
]
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
LandmarksOpt = Annotated[
    LandmarkMode,
    typer.Option(
        "--landmarks",
        case_sensitive=False,
        help="Where the 5 face points come from: auto (the K-Face .txt annotation when present, else the detector), detect, annotation.",
    ),
]
SeedOpt = Annotated[int, typer.Option("--seed", help="Random seed (results are reproducible for a given seed).")]


def _deprecated(old: str, new: str, old_value, new_value):
    """The value of a renamed option: the new spelling's, or the old one's with a warning."""
    if old_value is None:
        return new_value
    console.warn(f"{old} is deprecated and will be removed; use {new}")
    return old_value


# The global flags, also accepted after the command name: added to every command's options.
_GLOBAL_FLAGS = (
    inspect.Parameter("quiet", inspect.Parameter.KEYWORD_ONLY, default=False, annotation=QuietOpt),
    inspect.Parameter("debug", inspect.Parameter.KEYWORD_ONLY, default=False, annotation=DebugOpt),
)


def _option_names(signature: inspect.Signature) -> set[str]:
    """Every option name (``--x``, ``-x``) that a command's parameters declare."""
    names: set[str] = set()
    for param in signature.parameters.values():
        for info in getattr(param.annotation, "__metadata__", ()):
            decls = [getattr(info, "default", None), *(getattr(info, "param_decls", None) or ())]
            names.update(d for d in decls if isinstance(d, str) and d.startswith("-"))
    return names


def command(name: str | None = None, **kwargs) -> Callable:
    """Register a subcommand whose user errors print one red line and exit non-zero.

    The command also accepts ``--quiet`` and ``--debug`` (and ``--json``, where it declares
    :data:`JsonOpt`) after its name; given before it, they apply too. A command with ``--json`` also
    gets ``--format table|json|csv|tsv`` (unless it has a ``--format`` of its own, as ``export`` has
    for the model format).
    """

    def decorator(fn: Callable) -> Callable:
        signature = inspect.signature(fn, eval_str=True)
        takes_format = "json_output" in signature.parameters and "--format" not in _option_names(signature)

        @functools.wraps(fn)
        def wrapper(*args, **kw):
            saved = dataclasses.replace(console.MODE)
            quiet, debug = kw.pop("quiet", False), kw.pop("debug", False)
            output_format = kw.pop("output_format", None) if takes_format else None
            console.set_mode(quiet=saved.quiet or quiet, debug=saved.debug or debug)
            json_flag = kw.get("json_output")
            if json_flag is not None:
                kw["json_output"] = json_flag = bool(json_flag) or saved.json
                console.set_mode(json_output=json_flag)
            try:
                if output_format is not None:
                    console.set_mode(output_format=output_format)
                    kw["json_output"] = console.MODE.json or bool(json_flag)
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
                vars(console.MODE).update(vars(saved))

        extra = list(_GLOBAL_FLAGS)
        if takes_format:
            extra.append(
                inspect.Parameter("output_format", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=FormatOpt)
            )
        wrapper.__signature__ = signature.replace(parameters=[*signature.parameters.values(), *extra])  # type: ignore[attr-defined]
        wrapper.__annotations__ = {**fn.__annotations__, **{p.name: p.annotation for p in extra}}
        return app.command(name, **kwargs)(wrapper)

    return decorator


def _version(value: bool) -> None:
    if value:
        from kface_cli import __version__

        typer.echo(f"kface {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    debug: DebugOpt = False,
    quiet: QuietOpt = False,
    json_output: JsonOpt = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """K-Face to ArcFace: from the raw dataset to a working face-identification system."""
    console.set_mode(debug=debug, quiet=quiet, json_output=json_output)  # each invocation starts afresh


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
        n_ids=_deprecated("--ids", "--identities (-n)", ids_deprecated, identities),
        seed=seed,
        resolutions=resolutions,
        grid_preset=grid,
        ids_per_resolution=limits,
        workers=_deprecated("--workers", "--jobs (-j)", workers_deprecated, jobs),
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
        workers=_deprecated("--workers", "--jobs (-j)", workers_deprecated, jobs),
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
            console.table(f"Extracted {result.res} from {result.source}", ["", ""], rows, justify_numbers=False)
        )
        if result.missing_by_code:
            miss = [[code, describe(code[0], code), n] for code, n in result.missing_by_code.items()]
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
            help="A K-Face extraction, or any folder with one sub-folder of photos per person (SRC/<name>/**/*.jpg) \\[default: raw/<Res>].",
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

    margin = _deprecated("--margin", "--box-margin", margin_deprecated, box_margin)
    config = CropConfig(mode=mode, size=size, margin=margin, square=square, landmarks=landmarks)
    result = crop(
        workdir,
        res=res,
        config=config,
        raw_dir=source,
        out_dir=out,
        workers=_deprecated("--workers", "--jobs (-j)", workers_deprecated, jobs),
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
        )
    )
    outcomes = sorted({k for c in result.by_camera.values() for k in c})
    if len(outcomes) > 1:
        cam_rows = [[cam, *(c.get(k, 0) for k in outcomes)] for cam, c in result.by_camera.items()]
        console.show(console.table("Landmarks by camera", ["camera", *outcomes], cam_rows))
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
    max_pairs: Annotated[
        int | None,
        typer.Option(
            "--max-pairs",
            help="Cap on same-identity val pairs (as many different-identity pairs are drawn) \\[default: all].",
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
    """Split the crops into identity-disjoint train/val folders, classes.csv and val_pairs.csv."""
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
    )
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


def _config_options(fn: Callable) -> Callable:
    """Give ``fn(*, ..., **options)`` one option per TrainConfig field (but workdir): its name,
    type and help come from the field, so a new field is a new option with no edit here."""
    import inspect
    import typing

    from kface_cli.train.config import FIELDS, TrainConfig

    hints = typing.get_type_hints(TrainConfig)
    params, annotations = [], {}
    for name, f in FIELDS.items():
        if name == "workdir":
            continue
        hint = hints[name]
        kind = next((a for a in typing.get_args(hint) if a is not type(None)), hint)
        if typing.get_origin(hint) is tuple or kind not in (int, float, bool):
            kind = str  # e.g. --margin m1,m2,m3: parsed by the config
        kind = f.metadata.get("choices") or kind  # a Choice enum: --help lists its values
        flag = "--" + name.replace("_", "-")
        names = [f"{flag}/--no-{flag[2:]}" if kind is bool else flag] + (
            [f.metadata["short"]] if f.metadata.get("short") else []
        )
        shown = (
            "" if f.default in (None, ()) or "[default" in f.metadata.get("help", "") else f" [default: {f.default}]"
        )
        if kind is bool and shown:
            shown = f" [default: {flag[2:] if f.default else 'no-' + flag[2:]}]"
        text = (f.metadata.get("help") or f"TrainConfig.{name}") + shown
        annotations[name] = Annotated[kind | None, _opt(text.replace("[", "\\["), *names)]
        params.append(
            inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=annotations[name])
        )
    own_hints = typing.get_type_hints(fn, include_extras=True)
    own = [
        p.replace(annotation=own_hints[p.name])
        for p in inspect.signature(fn).parameters.values()
        if p.kind is not inspect.Parameter.VAR_KEYWORD
    ]
    fn.__signature__ = inspect.Signature(params + own)
    fn.__annotations__ = {**annotations, **own_hints}
    return fn


@command("train")
@_config_options
def train_cmd(
    *,
    config: Annotated[
        str | None,
        _opt(
            "TOML file with any of these options (the command line overrides it), or a shipped config: tutorial_r50, demo_mbf.",
            "--config",
            "-c",
        ),
    ] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue run --name exactly where it stopped.")] = False,
    json_output: JsonOpt = False,
    workdir: WorkdirOpt = None,
    **options: object,
) -> None:
    """Train a backbone with an ArcFace-family loss; runs/<name> gets backbone.pth (best), backbone_last.pth, checkpoint, log, plots.

    Multi-GPU: torchrun --nproc_per_node N -m kface_cli train ...
    """
    from kface_cli.train.loop import train_from_options

    overrides = {**options, "workdir": str(workdir) if workdir else None}
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
                _fmt_num(v.get("tar"), "{:.2%}"),
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
        f"{best}; {result.elapsed_s:.0f} s. Run folder {result.run_dir} (backbone.pth, backbone_last.pth, checkpoint.pt, log.jsonl, plots.png). Next: kface export"
    )


# ============================================================================================
# Faces in photos: export
# ============================================================================================


@command(
    "export",
    help=f"Export a trained model for deployment (input `data` [N,3,{FACE_SIZE},{FACE_SIZE}], metadata inside), checked against torch.",
)
def export_cmd(
    model_deprecated: Annotated[
        str | None, typer.Argument(hidden=True, metavar="MODEL", help="Deprecated: --model.", show_default=False)
    ] = None,
    model: ModelOpt = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            "-o",
            help=f"Model file to write \\[default: <run>/{RUN_ONNX}, or {RUN_TORCHSCRIPT} for torchscript].",
            show_default=False,
        ),
    ] = None,
    fmt: Annotated[
        ExportFormat,
        typer.Option(
            "--format",
            "-f",
            case_sensitive=False,
            help="onnx (ONNX Runtime, TensorRT, OpenVINO; insightface-compatible) or torchscript (libtorch).",
        ),
    ] = ExportFormat.ONNX,
    opset: Annotated[int, typer.Option("--opset", help="ONNX opset version.")] = DEFAULT_OPSET,
    network: NetworkOpt = None,
    json_output: JsonOpt = False,
    workdir: WorkdirOpt = None,
) -> None:
    from kface_cli.embedding.export import MIN_COSINE, export_model

    model = _deprecated("the positional MODEL", "--model (-m)", model_deprecated, model)
    result = export_model(model, out, fmt=fmt, opset=opset, workdir=workdir, network=network)
    if json_output:
        console.print_json(result.to_dict())
        return
    rows = [
        ["file", str(result.path)],
        ["format", result.format + (f" (opset {result.opset})" if result.opset else "")],
        ["network", result.network],
        ["embedding size", str(result.embedding_size)],
        ["input", result.metadata["kface.input"]],
        ["size", f"{result.size_bytes / 1e6:.1f} MB"],
        ["fingerprint", result.fingerprint],
        ["source", str(result.source)],
    ]
    console.show(console.table("Exported model", ["field", "value"], rows, justify_numbers=False))
    console.info(
        f"self-check passed: {result.check_faces} faces, min cosine vs torch {result.min_cosine:.6f} (>= {MIN_COSINE}), "
        f"max |diff| {result.max_abs_diff:.2e}; {result.seconds:.1f} s"
    )


# ============================================================================================
# Gallery: enroll, identify, gallery
# ============================================================================================

GalleryOpt = Annotated[
    Path | None,
    typer.Option(
        "--gallery", "-g", help=f"Gallery file \\[default: {GALLERY_FILE} in the workspace].", show_default=False
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
    IndexKind,
    typer.Option(
        "--index",
        case_sensitive=False,
        help=f"Search index kind: auto (exact up to {AUTO_FLAT_MAX:,} templates, then IVF), flat (exact), ivf, hnsw; built when the saved one differs.",
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
            "--aligned",
            help="Every photo is an aligned square crop: no detection (112 and 224 px squares, e.g. `kface crop` output, are used as they are anyway).",
        ),
    ] = False,
    per_identity: Annotated[
        PerIdentity,
        typer.Option(
            "--per-identity",
            case_sensitive=False,
            help="Templates kept per person: all (one per photo) or mean (one averaged template).",
        ),
    ] = PerIdentity.ALL,
    replace: Annotated[
        bool, typer.Option("--replace", help="First remove the existing templates of every person in DIR.")
    ] = False,
    landmarks: LandmarksOpt = LandmarkMode.AUTO,
    min_face: MinFaceOpt = None,
    commit_every: Annotated[
        int,
        typer.Option(
            "--commit-every",
            help="Photos embedded and saved together (an interrupted run keeps every saved batch).",
            min=1,
        ),
    ] = ENROLL_BATCH_SIZE,
    batch_size_deprecated: Annotated[
        int | None, typer.Option("--batch-size", hidden=True, help="Deprecated: --commit-every.", show_default=False)
    ] = None,
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
        batch_size=_deprecated("--batch-size", "--commit-every", batch_size_deprecated, commit_every),
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
            help=f"Squared L2 distance (2 - 2 cos) below which a face is named \\[default: the model's calibrated 1:N threshold, else its 1:1 one, else {DEFAULT_THRESHOLD:g} = cosine {DEFAULT_THRESHOLD_COSINE:g}].",
            show_default=False,
        ),
    ] = None,
    top_k: Annotated[
        int, typer.Option("--top-k", "-k", help="Identities listed per face (the best and the next candidates).")
    ] = DEFAULT_TOP_K,
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
        bool,
        typer.Option(
            "--aligned",
            help="Every input is an aligned square crop: no detection (112 and 224 px squares are used as they are anyway).",
        ),
    ] = False,
    landmarks: LandmarksOpt = LandmarkMode.AUTO,
    min_face: MinFaceOpt = None,
    index: IndexOpt = IndexKind.AUTO,
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
            console.table(f"Faces (threshold {result.threshold:.3f}: {result.threshold_detail})", columns, rows)
        )
        named = sum(1 for i in result.images for f in i.faces if f.name != "unknown")
        console.info(
            f"{result.faces} faces in {len(result.images)} images, {named} named, in {result.seconds:.2f} s; "
            f"index {result.index['kind']} over {result.index['templates']:,} templates"
            + (f"; annotated images in {annotate}" if annotate is not None else "")
        )
    if (fail_unknown and not result.matched_any()) or _none_readable(result.images):
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
    index: IndexOpt = IndexKind.AUTO,
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
    from kface_cli.gallery.manage import facts_rows, manage_gallery

    report = manage_gallery(
        _gallery_path(gallery, workdir), remove=remove or [], rebuild_index=rebuild_index, index_kind=index, check=check
    )
    if json_output:
        console.print_json(report)
        return
    for removed in report["removed"]:
        console.info(f"removed {removed['templates']} templates of {removed['name']}")
    if "check" in report:
        c = report["check"]
        console.info(
            f"checked {c['rows_checked']:,} of {c['templates']:,} templates: intact"
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
            facts_rows(facts),
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
    workdir: WorkdirOpt = None,
    json_output: JsonOpt = False,
) -> None:
    """Verification and identification metrics, by K-Face condition, with a report folder and plots."""
    from kface_cli.evaluate.evaluation import EvaluateOptions, evaluate
    from kface_cli.evaluate.report import condition_table, landmark_table, summary_rows, summary_title

    result = evaluate(
        EvaluateOptions(
            model=model, workdir=workdir, network=network, flip=flip, pairs=pairs, lfw_pairs=lfw_pairs, root=root,
            bin_file=bin_file, gallery_dir=gallery_dir, probe_dir=probe_dir, target_far=target_far,
            target_fpir=target_fpir, save_threshold=save_threshold, replace_threshold=replace_threshold, name=name,
            landmarks=landmarks, batch_size=_deprecated("--batch-size", "--embed-batch", batch_size_deprecated, embed_batch),
        )
    )  # fmt: skip
    if json_output:
        console.print_json(result.summary)
    else:
        console.show(
            console.table(summary_title(result.summary), ["metric", "value", "note"], summary_rows(result.summary))
        )
        title, columns, rows = condition_table(result.summary.get("per_condition"))
        if conditions and rows:
            console.show(console.table(title, columns, rows))
        detection = landmark_table(result.summary.get("landmarks"))
        if detection is not None:
            console.show(console.table(*detection))
        if result.report_dir is not None:
            console.show(f"Report: {result.report_dir}")
    if any("not_saved" in c for c in (result.summary.get("calibration") or {}).values()):
        raise typer.Exit(1)


# ============================================================================================
# One photo at a time: verify, embed, detect
# ============================================================================================

PhotosArg = Annotated[list[Path], typer.Argument(help="Photos, or folders of photos.", show_default=False)]


def _model_row(model: dict) -> list[str]:
    return ["model", f"{model.get('network')} {model.get('fingerprint')}"]


def _model_loader(model: str | None, network: str | None, workdir: Path | None) -> Callable:
    """Loads the model when the domain function asks (after it has checked its inputs)."""
    from kface_cli.embedding.loading import load_embedder
    from kface_cli.workspace import Workspace

    root = Workspace.resolve(workdir).root
    return lambda: load_embedder(model, workdir=root, network=network)


@command("verify")
def verify_cmd(
    image1: Annotated[Path, typer.Argument(help="First photo (its largest face is used).", show_default=False)],
    image2: Annotated[Path, typer.Argument(help="Second photo.", show_default=False)],
    model: ModelOpt = None,
    network: NetworkOpt = None,
    threshold: Annotated[
        float | None,
        typer.Option(
            "--threshold",
            "-t",
            help=f"Squared L2 distance (2 - 2 cos) below which the two are the same person \\[default: the model's calibrated 1:1 threshold, else {DEFAULT_THRESHOLD:g} = cosine {DEFAULT_THRESHOLD_COSINE:g}].",
            show_default=False,
        ),
    ] = None,
    landmarks: LandmarksOpt = LandmarkMode.AUTO,
    json_output: JsonOpt = False,
    workdir: WorkdirOpt = None,
) -> None:
    """Are two photos the same person? Distance and verdict at the model's threshold (exit 0 same, 1 different, 2 error)."""
    from kface_cli.embedding.compare import verify_photos

    loader = _model_loader(model, network, workdir)
    result = verify_photos(image1, image2, loader, threshold=threshold, landmarks=landmarks)
    if json_output:
        console.print_json(result.to_json())
    else:
        rows = [
            ["photos", f"{console.display_path(result.image1)}  vs  {console.display_path(result.image2)}"],
            ["verdict", "[green]same person[/green]" if result.same else "[yellow]different people[/yellow]"],
            ["distance", f"{result.distance:.4f} (cosine {result.cosine:.4f})"],
            ["threshold", f"{result.threshold:.4f} ({result.threshold_source})"],
            _model_row(result.model),
        ]
        console.show(console.table("Verification", ["field", "value"], rows, justify_numbers=False))
    if not result.same:
        raise typer.Exit(1)


@command("embed")
def embed_cmd(
    paths: PhotosArg,
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            "-o",
            help="Embeddings file: FILE.npy (rows in the order of FILE.names.txt) or FILE.h5 (HDF5: embeddings, names).",
            show_default=False,
        ),
    ],
    model: ModelOpt = None,
    network: NetworkOpt = None,
    aligned: Annotated[
        bool,
        typer.Option(
            "--aligned",
            help="Every photo is an aligned square face crop (e.g. `kface crop` output): no detection, decoding overlapped with the model.",
        ),
    ] = False,
    landmarks: LandmarksOpt = LandmarkMode.AUTO,
    embed_batch: EmbedBatchOpt = EMBED_BATCH_SIZE,
    json_output: JsonOpt = False,
    workdir: WorkdirOpt = None,
) -> None:
    """Write one unit-length embedding per photo (its largest face) to .npy + names, or HDF5."""
    from kface_cli.embedding.compare import embed_photos

    loader = _model_loader(model, network, workdir)
    result = embed_photos(paths, loader, out, landmarks=landmarks, batch_size=embed_batch, aligned=aligned)
    if json_output:
        console.print_json(result.to_json())
        return
    rows = [
        ["file", result.out],
        ["names", result.names_file if result.names_file else "inside the file (dataset 'names')"],
        ["rows", f"{len(result.images)} x {result.embedding_size} float32, unit length"],
        ["no face (left out)", str(len(result.failed))],
        _model_row(result.model),
    ]
    console.show(console.table("Embeddings", ["field", "value"], rows, justify_numbers=False))
    console.info(f"{len(result.images)} photos embedded in {result.seconds:.1f} s")


@command("detect")
def detect_cmd(
    paths: PhotosArg,
    landmarks: LandmarksOpt = LandmarkMode.AUTO,
    min_face: MinFaceOpt = None,
    annotate: Annotated[
        Path | None,
        typer.Option(
            "--annotate",
            help="Write copies of the photos with boxes, the 5 points and scores drawn into this folder.",
            show_default=False,
        ),
    ] = None,
    json_output: JsonOpt = False,
) -> None:
    """Find the faces in photos: box, 5 landmarks (eyes, nose, mouth corners) and score of each."""
    from kface_cli.face.detection import detect_photos, table_rows

    result = detect_photos(paths, landmarks=landmarks, min_face=min_face, annotate=annotate)
    if json_output:
        console.print_json(result.to_json())
    else:
        columns, rows = table_rows(result)
        console.show(console.table(f"Faces in {len(result.images)} photos", columns, rows))
        console.info(
            f"{result.faces} faces in {len(result.images)} photos in {result.seconds:.2f} s"
            + (f"; annotated photos in {annotate}" if annotate is not None else "")
        )
    if _none_readable(result.images):
        raise typer.Exit(1)


def _none_readable(images: list) -> bool:
    """Whether every input photo failed to load (each already reported): the command exits 1."""
    return bool(images) and all(img.error for img in images)


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
            help="margin: flag images nearer another identity's dominant sub-center than their own by more than the threshold; angle (the paper's): images farther than the threshold from their own identity's.",
        ),
    ] = CleanRule.MARGIN,
    threshold: Annotated[
        float | None,
        typer.Option(
            "--threshold",
            help=f"The rule's cut in degrees \\[default: margin {CLEAN_MARGIN_DEG:g}, angle {CLEAN_ANGLE_DEG:g} (the paper's)].",
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


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except KFaceError as e:  # raised outside a command (e.g. in a callback)
        console.error(str(e))
        sys.exit(e.exit_code)
