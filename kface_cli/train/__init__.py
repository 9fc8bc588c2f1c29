"""Training: ``config`` (frozen TrainConfig, TOML + CLI), ``schedule`` (warm-up + polynomial
decay), ``loop`` (:func:`kface_cli.train.loop.train`), ``checkpoint`` (run-folder files),
``distributed`` (torchrun setup), ``plots``. Nothing here imports torch at package import."""
