"""The ``kface`` command: one thin function per subcommand (parse options, call a domain function, print).

Nothing heavy is imported at module level: torch, mediapipe, faiss and h5py are imported inside
the domain functions, so ``kface --help`` stays fast. User errors (:class:`KFaceError`) become one
red line on stderr and exit code 2; ``kface --debug ...`` shows the traceback too.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Annotated, Callable, Optional

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
    Optional[Path],
    typer.Option("--workdir", "-w", help="Workspace folder holding every stage's output [default: $KFACE_WORKDIR or .]", show_default=False),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout (progress and warnings go to stderr).")]
ResOpt = Annotated[str, typer.Option("--res", help="K-Face resolution: High, Middle or Low.")]
ModelOpt = Annotated[
    Optional[str],
    typer.Option("--model", "-m", help="Run folder, checkpoint, insightface backbone.pth or ONNX file [default: best model of the latest run].", show_default=False),
]
NetworkOpt = Annotated[
    Optional[str],
    typer.Option("--network", help="Backbone of a bare backbone.pth (r18, r34, r50, r100, r200, mbf); read from the run when there is one.", show_default=False),
]
SeedOpt = Annotated[int, typer.Option("--seed", help="Random seed (results are reproducible for a given seed).")]


def command(name: str | None = None, **kwargs) -> Callable:
    """Register a subcommand whose user errors print one red line and exit non-zero."""

    def decorator(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def wrapper(*args, **kw):
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
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")] = False,
) -> None:
    """K-Face to ArcFace: from the raw dataset to a working face-identification system."""
    console.set_mode(debug=debug, quiet=quiet)


# ============================================================================================
# Data stage: sample-data, extract, crop, split
# ============================================================================================


# ============================================================================================
# Models and training: train
# ============================================================================================


# ============================================================================================
# Faces in photos: export
# ============================================================================================


# ============================================================================================
# Gallery: enroll, identify, gallery
# ============================================================================================


# ============================================================================================
# Evaluation: evaluate
# ============================================================================================


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except KFaceError as e:  # raised outside a command (e.g. in a callback)
        console.error(str(e))
        sys.exit(e.exit_code)
