"""mediapipe's face graphs for :mod:`kface_cli.face.detector`: imported late, created once per
thread and cached, their native start-up chatter silenced (unless ``--debug``)."""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
import sys
import threading
import types
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from kface_cli.errors import KFaceError

#: A mediapipe graph serves one thread at a time: each thread runs graphs of its own (threads
#: detect in parallel, see kface_cli/parallel.py). Imports and graph creation take this lock
#: (creation silences file descriptor 2, which is process-wide).
_MP_INIT_LOCK = threading.RLock()
_THREAD_GRAPHS = threading.local()
_MP_PROTOBUF_WARNING = r"SymbolDatabase\.GetPrototype\(\) is deprecated"


def _debugging() -> bool:
    from kface_cli.console import MODE

    return MODE.debug


@contextlib.contextmanager
def quiet_native_stderr() -> Iterator[None]:
    """Silence mediapipe/TFLite's C++ log lines (written straight to file descriptor 2), unless
    ``--debug``. Descriptor 2 is the whole process's: kface's own warnings from other threads wait
    for the silence to end (:data:`kface_cli.console.STDERR_LOCK`)."""
    from kface_cli.console import STDERR_LOCK

    if _debugging():
        yield
        return
    try:
        fd = os.dup(2)
    except OSError:  # no real stderr (e.g. some notebook kernels)
        yield
        return
    try:
        with STDERR_LOCK, open(os.devnull, "w") as devnull:
            with contextlib.suppress(AttributeError, OSError, ValueError):  # no or a closed sys.stderr
                sys.stderr.flush()  # what was written before the silence goes out before it
            os.dup2(devnull.fileno(), 2)
            try:
                yield
            finally:
                os.dup2(fd, 2)
    finally:
        os.close(fd)


#: Packages whose ``__init__`` runs only when asked for a name (see :func:`_import_face_solutions`).
_MP_DEFERRED_INITS = ("mediapipe", "mediapipe.python.solutions")


def _import_face_solutions() -> tuple[Any, Any]:
    """mediapipe's face_detection and face_mesh solutions, without the rest of mediapipe.

    ``import mediapipe.<anything>`` first runs ``mediapipe/__init__.py``, which imports every
    legacy solution (``drawing_utils``, and with it matplotlib: 1.4 s) and the Tasks API
    (sounddevice...); the detector needs two solution modules. So ``mediapipe`` and
    ``mediapipe.python.solutions`` are registered without running their ``__init__`` (their
    submodules import as usual), and both run it the first time anyone asks either for a name it
    lacks: code that uses ``mediapipe.solutions`` or ``mediapipe.tasks`` later in the same
    process still gets the whole package.
    """
    deferred: list[tuple[types.ModuleType, Any]] = []

    def finish() -> None:
        while deferred:  # the solutions package first: mediapipe's __init__ imports it
            module, spec = deferred.pop()
            del module.__dict__["__getattr__"]
            spec.loader.exec_module(module)

    for name in _MP_DEFERRED_INITS:
        if name in sys.modules:  # already imported (whole or deferred)
            continue
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            raise ImportError(f"No module named {name!r}")
        module = importlib.util.module_from_spec(spec)

        def module_getattr(attr: str, module: types.ModuleType = module) -> Any:
            finish()
            return getattr(module, attr)

        module.__dict__["__getattr__"] = module_getattr
        sys.modules[name] = module
        parent, _, child = name.rpartition(".")
        if parent:
            setattr(sys.modules[parent], child, module)
        deferred.append((module, spec))
    # import_module, not `from ... import`: that asks the package for the names first
    return tuple(importlib.import_module(f"mediapipe.python.solutions.{m}") for m in ("face_detection", "face_mesh"))


@functools.cache
def import_mediapipe() -> Any:
    if not _debugging():  # read by mediapipe's C++ logging when it loads: only errors, unless --debug
        os.environ.setdefault("GLOG_minloglevel", "2")
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            face_detection, face_mesh = _import_face_solutions()
    except ImportError as e:  # pragma: no cover - mediapipe is a dependency
        raise KFaceError(
            f"mediapipe is not available: {e}", hint="Install it with `pip install 'mediapipe<=0.10.21'`."
        ) from None
    # (absl's Python logging is not imported: the face solutions never log through it, and its
    # import cost 15-20 ms of every identify; their C++ logging obeys GLOG_minloglevel above.)
    return face_detection, face_mesh


def _thread_graph(key: tuple[Any, ...], make: Callable[[Any, Any], Any]) -> Any:
    """This thread's mediapipe graph for ``key``, made by ``make(face_detection, face_mesh)`` once."""
    graphs = _THREAD_GRAPHS.__dict__.setdefault("graphs", {})
    if key not in graphs:
        with _MP_INIT_LOCK:
            solutions = import_mediapipe()
            with quiet_native_stderr():
                graph = make(*solutions)
                graph.process(np.zeros((64, 64, 3), np.uint8))  # first run prints the delegate banner
        graphs[key] = graph
    return graphs[key]


def face_detection(min_confidence: float) -> Any:
    return _thread_graph(
        ("detection", min_confidence),
        lambda face_detection, _: face_detection.FaceDetection(
            model_selection=1, min_detection_confidence=min_confidence
        ),
    )


def face_mesh() -> Any:
    return _thread_graph(
        ("mesh",),
        lambda _, face_mesh: face_mesh.FaceMesh(
            static_image_mode=True, max_num_faces=1, refine_landmarks=True, min_detection_confidence=0.3
        ),
    )


def process(solution: Any, rgb: np.ndarray, *, quiet_first: bool = False) -> Any:
    # mediapipe's glue calls a protobuf API that newer protobuf deprecates, on every run. A filter,
    # not catch_warnings(), which is not thread-safe; re-adding the same filter changes nothing.
    warnings.filterwarnings("ignore", _MP_PROTOBUF_WARNING, UserWarning)
    if not quiet_first or _FIRST_RUNS.get(id(solution), 0) >= _QUIET_RUNS:
        return solution.process(np.ascontiguousarray(rgb))
    # Face Mesh's C++ calculators log once on their first face ("W0000 ...
    # landmark_projection_calculator.cc: Using NORM_RECT without IMAGE_DIMENSIONS..."), whatever
    # GLOG_minloglevel says: its first runs are made with file descriptor 2 silenced.
    with _MP_INIT_LOCK, quiet_native_stderr():
        result = solution.process(np.ascontiguousarray(rgb))
    found = bool(getattr(result, "multi_face_landmarks", None))
    _FIRST_RUNS[id(solution)] = _QUIET_RUNS if found else _FIRST_RUNS.get(id(solution), 0) + 1
    return result


#: Runs of a Face Mesh graph (by id) made silenced: until its first face, at most _QUIET_RUNS.
_FIRST_RUNS: dict[int, int] = {}
_QUIET_RUNS = 4
