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
faiss or h5py. The command modules are imported only when their command runs
(:class:`~kface_cli.cli.common.LazyGroup`; :data:`~kface_cli.cli.common.COMMANDS` names them).
"""

from kface_cli.cli.common import COMMANDS, all_commands, app, main

#: The order ``kface --help`` lists the commands in: the pipeline's.
COMMAND_ORDER = tuple(COMMANDS)

__all__ = ["COMMANDS", "COMMAND_ORDER", "all_commands", "app", "main"]
