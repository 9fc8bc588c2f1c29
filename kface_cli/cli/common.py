"""What every ``kface`` command shares: the Typer app, the option types (one option name means one
thing everywhere), the :func:`command` decorator (global flags, output format, user errors as one red
line) and the entry point.

Nothing heavy is imported at module level: torch, mediapipe, faiss and h5py are imported inside
the domain functions, so ``kface --help`` stays fast. User errors (:class:`KFaceError`) become one
red line on stderr and exit code 2; ``kface --debug ...`` shows the traceback too.

One option name means one thing in every command: ``-n`` is a count, ``--ids`` a list of K-Face
IDs, ``--jobs``/``-j`` the parallel jobs of a data stage (0: one per core), ``--workers`` the
DataLoader workers of training, ``--batch-size`` the training batch, ``--embed-batch`` faces per
forward pass, ``--model``/``-m`` the model, ``--aligned`` "these photos are aligned crops". The
global flags ``--json``, ``--format``, ``--quiet``/``-q`` and ``--debug`` work before or after the
command name; flags take no value (``--quiet true`` is refused) and show no type in help; renamed
options keep their old spelling as a hidden alias that warns.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib
import inspect
import os
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated

import typer

from kface_cli import console
from kface_cli.atomic import os_error
from kface_cli.choices import (
    MAX_SEED,
    LandmarkMode,
    OutputFormat,
)
from kface_cli.cli import coercion
from kface_cli.defaults import (
    MAX_AUTO_WORKERS,
)
from kface_cli.errors import KFaceError
from kface_cli.models.registry import backbone_names
from kface_cli.workspace import GALLERY_FILE, RESOLUTIONS

#: Every command, in the order ``kface --help`` lists them (the pipeline's): the module under
#: kface_cli/cli/ that defines it, and the line the list shows (the first paragraph of its help;
#: tests/test_cli.py checks that they agree). Only the module of the command that runs is imported.
COMMANDS: dict[str, tuple[str, str]] = {
    "sample-data": ("data", "Generate synthetic identities in K-Face's exact layout (zips, image sizes, annotations)."),
    "extract": (
        "data",
        "Extract the chosen images and annotations from K-Face zips into raw/<Res> (re-runs skip finished work).",
    ),
    "crop": (
        "data",
        "Crop the extracted faces to 112x112 (aligned like insightface) into faces/<Res>, with a manifest.",
    ),
    "split": (
        "data",
        "Split the crops into identity-disjoint train/val(/test) folders, classes.csv and val_pairs.csv (test_pairs.csv).",
    ),
    "train": (
        "train",
        "Train a backbone with an ArcFace-family loss; runs/<name> gets backbone.pth (best), backbone_last.pth, checkpoint, log, plots.",
    ),
    "export": (
        "train",
        "Export a trained model for deployment (input `data` [N,3,112,112], metadata inside), checked against torch.",
    ),
    "enroll": (
        "deploy",
        "Add the faces of known people to the gallery, from photos or precomputed embeddings (re-enrolling is a no-op).",
    ),
    "identify": (
        "deploy",
        "Name the faces in photos, videos or a webcam (exit 0; 1 with --fail-unknown when nobody matched; 2 on errors).",
    ),
    "gallery": (
        "deploy",
        "Show the gallery: its facts and identities with template counts; remove people; rebuild the index; check or upgrade it.",
    ),
    "evaluate": (
        "evaluate",
        "Verification and identification metrics, by K-Face condition, with a report folder and plots.",
    ),
    "verify": (
        "deploy",
        "Are two photos the same person? Distance and verdict at the model's threshold (exit 0 same, 1 different, 2 error).",
    ),
    "embed": (
        "deploy",
        "Write a unit-length embedding of each photo's largest face (or of every face: --all-faces), with its photo and box, to .npy or HDF5.",
    ),
    "detect": (
        "deploy",
        "Find the faces in photos: box, 5 landmarks (eyes, nose, mouth corners) and score of each.",
    ),
    "clean": (
        "research",
        "Find noisy training labels with sub-center ArcFace: images that sit with another identity's dominant sub-center.",
    ),
    "invert": (
        "research",
        "Generate faces whose embedding matches a face, a gallery identity or a vector (model inversion; torch models only).",
    ),
    "models": (
        "models",
        "Pretrained model packs: list the known ones, fetch one (checksummed, atomic), remove one. Cache: $KFACE_HOME.",
    ),
}


class LazyGroup(typer.core.TyperGroup):
    """The ``kface`` group: a command's module is imported, and its options built, only when that
    command is asked for (about 20 ms of Typer and 10-30 ms of imports per command otherwise,
    on every run). The command list of ``kface --help`` comes from :data:`COMMANDS`."""

    _listing = False

    def list_commands(self, ctx) -> list[str]:  # noqa: ANN001 - click's signature
        return [*COMMANDS, *(name for name in self.commands if name not in COMMANDS)]

    def get_command(self, ctx, cmd_name: str):  # noqa: ANN001, ANN201 - click's signature
        if cmd_name not in self.commands and cmd_name in COMMANDS:
            if self._listing:  # the list of commands in --help: the name and its line only
                return typer.core.TyperCommand(cmd_name, help=COMMANDS[cmd_name][1])
            load_command(self, cmd_name)
        return self.commands.get(cmd_name)

    def resolve_command(self, ctx, args: list[str]):  # noqa: ANN001, ANN201 - click's signature
        if args and args[0] not in COMMANDS and args[0] not in self.commands:
            for name in COMMANDS:  # a typo: Typer suggests the closest of the commands it has
                self.get_command(ctx, name)
        return super().resolve_command(ctx, args)

    def format_help(self, ctx, formatter) -> None:  # noqa: ANN001 - click's signature
        self._listing = True
        try:
            super().format_help(ctx, formatter)
        finally:
            self._listing = False


def load_command(group: typer.core.TyperGroup, name: str) -> None:
    """Import the module of command ``name`` (see :data:`COMMANDS`) and add the command to ``group``."""
    importlib.import_module(f"kface_cli.cli.{COMMANDS[name][0]}")
    for info in app.registered_commands:
        if info.name == name:
            group.commands[name] = typer.main.get_command_from_info(
                info, pretty_exceptions_short=app.pretty_exceptions_short, rich_markup_mode=app.rich_markup_mode
            )
    for group_info in app.registered_groups:
        if group_info.name == name:
            group.commands[name] = typer.main.get_group_from_info(
                group_info,
                pretty_exceptions_short=app.pretty_exceptions_short,
                rich_markup_mode=app.rich_markup_mode,
                suggest_commands=app.suggest_commands,
            )


def all_commands() -> typer.core.TyperGroup:
    """The ``kface`` group with every command loaded (tests, documentation checks)."""
    group = typer.main.get_command(app)
    for name in COMMANDS:
        group.get_command(None, name)
    return group


coercion.install()

app = typer.Typer(
    name="kface",
    help="K-Face to ArcFace: extract, crop, split, train, export, enroll, identify, evaluate.",
    cls=LazyGroup,
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
        help="Result format (JSON follows the schema in docs/json.md) \\[default: table].",
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
        help="Run folder, checkpoint, insightface backbone.pth, ONNX file, or a fetched pack's name (`kface models list`) \\[default: best model of the latest run].",
        show_default=False,
    ),
]
TrustModelOpt = Annotated[
    bool,
    typer.Option(
        "--trust-model",
        help="Let a TorchScript model run: it is a program that can read and write any file (refused otherwise; ONNX and state_dicts run no code).",
    ),
]
NetworkOpt = Annotated[
    str | None,
    typer.Option(
        "--network",
        help=f"Backbone of a bare backbone.pth ({backbone_names()}); read from the run when there is one.",
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
GalleryOpt = Annotated[
    Path | None,
    typer.Option(
        "--gallery", "-g", help=f"Gallery file \\[default: {GALLERY_FILE} in the workspace].", show_default=False
    ),
]
SeedOpt = Annotated[
    int,
    typer.Option("--seed", help="Random seed (results are reproducible for a given seed).", min=0, max=MAX_SEED),
]
AlignedOpt = Annotated[
    bool,
    typer.Option(
        "--aligned",
        help="Every photo is an aligned face crop (e.g. insightface's 112x112): used as it is, no detection. Without it a photo is a crop only when the detector finds its face on the ArcFace template, or it lies in a `kface crop` output.",
    ),
]


def deprecated(old: str, new: str, old_value, new_value):
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


def _flag_type(self, ctx):  # noqa: ANN001, ANN202 - typer's TyperOption.display_type_rich
    """Boolean flags take no value: their help shows no ``<bool>`` type (typer 0.2x prints one)."""
    return None if self.is_flag and self.metavar is None else _typer_display_type(self, ctx)


_typer_display_type = typer.core.TyperOption.display_type_rich
typer.core.TyperOption.display_type_rich = _flag_type  # type: ignore[method-assign]


# Renderers' helpers: what --format csv|tsv writes (data, not the table; docs/json.md) -------


def record(data: dict, prefix: str = "") -> dict:
    """A JSON result flattened to one CSV record: scalars keep their JSON names, nested objects
    join names with ``_`` (``model_network``), lists are left out (``--json`` has them)."""
    flat: dict = {}
    for key, value in console.jsonable(data).items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(record(value, f"{name}_"))
        elif not isinstance(value, list):
            flat[name] = value
    return flat


def record_data(data: dict) -> tuple[list[str], list[list]]:
    """``(columns, [row])``: a one-record result as CSV data (see :func:`record`)."""
    flat = record(data)
    return list(flat), [list(flat.values())]


def _option_names(signature: inspect.Signature) -> set[str]:
    """Every option name (``--x``, ``-x``) that a command's parameters declare."""
    names: set[str] = set()
    for param in signature.parameters.values():
        for info in getattr(param.annotation, "__metadata__", ()):
            decls = [getattr(info, "default", None), *(getattr(info, "param_decls", None) or ())]
            names.update(d for d in decls if isinstance(d, str) and d.startswith("-"))
    return names


def command(name: str | None = None, *, group: typer.Typer | None = None, **kwargs) -> Callable:
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
            _RAN[:] = [name]
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
                with console.quiet_third_party(not console.MODE.debug):
                    return fn(*args, **kw)
            except KeyboardInterrupt:
                console.error("interrupted")
                raise typer.Exit(130) from None
            except BrokenPipeError:  # `kface ... | head`: the reader has all it wanted
                console.close_stdout()
                raise typer.Exit(141) from None
            except Exception as e:
                if isinstance(e, (typer.Exit, typer.Abort)) or (user_error := _user_error(e)) is None:
                    raise
                if console.MODE.debug:
                    console.err.print_exception()
                console.error(str(user_error))
                raise typer.Exit(user_error.exit_code) from None
            finally:  # an in-process caller (tests, notebooks) gets the output mode it had
                vars(console.MODE).update(vars(saved))

        extra = list(_GLOBAL_FLAGS)
        if takes_format:
            extra.append(
                inspect.Parameter("output_format", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=FormatOpt)
            )
        wrapper.__signature__ = signature.replace(parameters=[*signature.parameters.values(), *extra])  # type: ignore[attr-defined]
        wrapper.__annotations__ = {**fn.__annotations__, **{p.name: p.annotation for p in extra}}
        return (group or app).command(name, **kwargs)(wrapper)

    return decorator


def _user_error(e: BaseException) -> KFaceError | None:
    """The one line for an exception that the user's machine caused, or None for a real bug.

    A :class:`KFaceError` is its own line; running out of memory (``ulimit -v``, a too-large
    batch: ``MemoryError``, torch's or ONNX Runtime's allocation failures) says what to do; a
    read-only place or a full disk anywhere (a folder that cannot be made, standard output on a
    full disk) names the file.
    """
    if isinstance(e, KFaceError):
        return e
    if isinstance(e, MemoryError) or _ALLOCATION_FAILURE.search(str(e)[:2000]):
        return KFaceError(
            "out of memory",
            hint="Free some memory, raise the memory limit (ulimit -v), or use a smaller --embed-batch, "
            "--batch-size or fewer --jobs; nothing already saved was lost.",
        )
    if isinstance(e, OSError):
        return os_error(e)
    return None


#: What torch, ONNX Runtime, C++ libraries and the loader say when memory (or a thread) cannot be had.
_ALLOCATION_FAILURE = re.compile(
    r"std::bad_alloc|bad_alloc|[Ff]ailed to allocate memory|can't allocate memory|"
    r"[Cc]annot allocate memory|[Oo]ut of memory|Unable to allocate|failed to map segment from shared object|"
    r"can't start new thread"
)


#: Environment variables that set OpenBLAS's threads (the user's choice is kept).
_BLAS_THREADS = ("OPENBLAS_NUM_THREADS", "GOTO_NUM_THREADS", "OMP_NUM_THREADS")


@contextlib.contextmanager
def one_blas_thread() -> Iterator[None]:
    """numpy, when it loads inside this block, starts OpenBLAS with one thread.

    At load, OpenBLAS starts a thread per core that spins while it waits for work: 40-55 ms of CPU
    of a one-photo `kface identify` on 2 cores, taken from the thread that detects faces
    (docs/performance.md). The photo commands do no matrix work worth them (the gallery search of
    a few faces is a small product; the model runs in ONNX Runtime's own threads). A user's
    OPENBLAS_NUM_THREADS / OMP_NUM_THREADS is kept; libraries loaded after the block (FAISS's own
    OpenBLAS) start with their defaults.
    """
    if "numpy" in sys.modules or any(name in os.environ for name in _BLAS_THREADS):
        yield
        return
    os.environ["OPENBLAS_NUM_THREADS"] = "1"
    try:
        yield
    finally:
        os.environ.pop("OPENBLAS_NUM_THREADS", None)


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
    output_format: FormatOpt = None,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """K-Face to ArcFace: from the raw dataset to a working face-identification system."""
    console.set_mode(debug=debug, quiet=quiet, output_format=output_format or "table")  # each invocation afresh
    if json_output:  # --json wins over a --format given with it
        console.set_mode(json_output=True)
    console.MODE.data_written = False


#: Words a shell user may put after a flag as if it took a value (``--quiet true``).
_FLAG_VALUES = ("true", "false", "yes", "no", "on", "off", "1", "0")


def check_flag_values(argv: list[str]) -> None:
    """``--quiet true``: a flag takes no value, and "true" would be read as a path (or a command)."""
    if not any(a.lower() in _FLAG_VALUES for a in argv):
        return
    flags: set[str] = set()
    group = typer.main.get_command(app)
    named = [group.get_command(None, a) for a in dict.fromkeys(argv) if a in COMMANDS]  # the command run
    commands = [group, *(c for c in named if c is not None)]
    commands += [sub for c in named for sub in getattr(c, "commands", {}).values()]  # `models list`
    for cmd in commands:
        for param in cmd.params:
            if getattr(param, "param_type_name", "") == "option" and getattr(param, "is_flag", False):
                flags.update(param.opts + param.secondary_opts)
    for flag, value in zip(argv, argv[1:]):
        if flag in flags and value.lower() in _FLAG_VALUES and not Path(value).exists():
            raise KFaceError(
                f"{flag} takes no value: {value!r} after it would be read as a path or a command",
                hint=f"Write {flag} alone to turn it on (leave it out for off).",
            )


#: The command run last in this process (set by :func:`command`'s wrapper).
_RAN: list[str | None] = []
#: Commands after which a process that completed them (exit code 0 or 1: their results) ends
#: without the interpreter's teardown (:func:`_exit_now`): they read photos, a model and a gallery,
#: and whatever they write (``--csv``, ``--annotate``, a rebuilt search index) is written, closed
#: and renamed into place, in the main thread, before they return. Errors and interruptions exit
#: as usual (a worker thread may be in the middle of something then).
QUICK_EXIT_COMMANDS = ("identify", "verify", "detect")


def _exit_now(code: object) -> None:
    """End the process with ``code`` (a SystemExit's) now that the command's output is out.

    The interpreter's teardown (freeing every module's objects, then the static objects of the C++
    libraries: mediapipe, ONNX Runtime, OpenCV, HDF5) took 50-75 ms of CPU and 0.1 s of a one-photo
    `kface identify` (docs/performance.md) and does nothing a finished command needs. Exit handlers
    (:mod:`atexit`) still run and both output streams are flushed.
    """
    import atexit

    if code is None:
        status = 0
    elif isinstance(code, int):
        status = code
    else:  # what Python itself does with a message
        print(code, file=sys.stderr)
        status = 1
    run_exit_handlers = getattr(atexit, "_run_exitfuncs", None)
    if run_exit_handlers is not None:
        run_exit_handlers()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(status & 0xFF)


def main() -> None:
    """Console-script entry point."""
    try:
        check_flag_values(sys.argv[1:])
        app()
    except KFaceError as e:  # raised outside a command (e.g. in a callback)
        console.error(str(e))
        sys.exit(e.exit_code)
    except SystemExit as e:
        console.close_stdout()  # a full or closed stdout: one line, not "Exception ignored" at exit
        if _RAN and _RAN[-1] in QUICK_EXIT_COMMANDS and e.code in (0, 1, None):
            _exit_now(e.code)
        raise e from None
