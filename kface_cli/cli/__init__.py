"""The ``kface`` command: one thin function per subcommand (parse options, call a library function,
hand its result to one renderer), one module per stage.

* :mod:`~kface_cli.cli.common`: the Typer app, the shared option types, the :func:`command`
  decorator (global flags, output format, user errors) and :func:`main`.
* :mod:`~kface_cli.cli.data`: ``sample-data``, ``extract``, ``crop``, ``split``.
* :mod:`~kface_cli.cli.train`: ``train``, ``export``.
* :mod:`~kface_cli.cli.deploy`: ``enroll``, ``identify``, ``gallery``, ``verify``, ``embed``, ``detect``.
* :mod:`~kface_cli.cli.evaluate`: ``evaluate``.
* :mod:`~kface_cli.cli.research`: ``clean``, ``invert``.
* :mod:`~kface_cli.cli.models`: ``models list``, ``models get``, ``models remove`` (pretrained packs).

Nothing heavy is imported here or in those modules: ``kface --help`` loads no torch, mediapipe,
faiss or h5py.
"""

from kface_cli.cli import data, deploy, evaluate, models, research, train  # noqa: F401  (each registers its commands)
from kface_cli.cli.common import app, main

#: The order ``kface --help`` lists the commands in: the pipeline's.
COMMAND_ORDER = (
    "sample-data",
    "extract",
    "crop",
    "split",
    "train",
    "export",
    "enroll",
    "identify",
    "gallery",
    "evaluate",
    "verify",
    "embed",
    "detect",
    "clean",
    "invert",
)
app.registered_commands.sort(key=lambda info: COMMAND_ORDER.index(info.name))

__all__ = ["COMMAND_ORDER", "app", "main"]
