"""Training and model files: ``train``, ``export``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from kface_cli import console
from kface_cli.choices import (
    ExportFormat,
)
from kface_cli.cli.common import (
    JsonOpt,
    ModelOpt,
    NetworkOpt,
    WorkdirOpt,
    command,
    deprecated,
    record_data,
)
from kface_cli.defaults import (
    DEFAULT_OPSET,
    FACE_SIZE,
)
from kface_cli.workspace import RUN_ONNX, RUN_TORCHSCRIPT

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
    rows, data = [], []
    for r in result.history:
        v = r.get("val") or {}
        data.append(
            [
                r["epoch"], r.get("loss"), v.get("accuracy"), v.get("threshold"), v.get("tar"),
                r.get("samples_per_s"), bool(r.get("best")),
            ]
        )  # fmt: skip
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
            data=(["epoch", "loss", "val_accuracy", "val_threshold", "val_tar", "samples_per_s", "best"], data),
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

    model = deprecated("the positional MODEL", "--model (-m)", model_deprecated, model)
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
    console.show(
        console.table(
            "Exported model", ["field", "value"], rows, justify_numbers=False, data=record_data(result.to_dict())
        )
    )
    console.info(
        f"self-check passed: {result.check_faces} faces, min cosine vs torch {result.min_cosine:.6f} (>= {MIN_COSINE}), "
        f"max |diff| {result.max_abs_diff:.2e}; {result.seconds:.1f} s"
    )
