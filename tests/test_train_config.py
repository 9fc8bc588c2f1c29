import math

import pytest

from kface_cli.errors import KFaceError
from kface_cli.train.config import (
    ADAMW_DEFAULT_LR,
    FIELDS,
    SGD_MIN_AUTO_LR,
    TrainConfig,
    config_from_dict,
    normalise_keys,
    read_config_file,
    resolve_config,
)


@pytest.mark.parametrize(
    "overrides",
    [
        {"margin": "nan"},
        {"margin": "-5"},
        {"margin": "inf"},
        {"scale": 0},
        {"scale": math.nan},
        {"lr": math.inf},
        {"momentum": 1.5},
        {"weight_decay": -1},
        {"grad_clip": 0},
        {"loss": "combined", "margin": "1,nan,0"},
    ],
)
def test_bad_numeric_options_refused_up_front(overrides):
    with pytest.raises(KFaceError) as e:
        resolve_config(overrides=overrides)
    assert "--" in e.value.message if hasattr(e.value, "message") else "--" in str(e.value)


def test_good_options_accepted():
    cfg = resolve_config(overrides={"margin": "0.4", "scale": 32})
    assert cfg.margin == (0.4,) and cfg.scale == 32


def test_non_utf8_config_is_one_error(tmp_path):
    p = tmp_path / "c.toml"
    p.write_bytes(b"epochs = 3\n\xff\xfe\x00")
    with pytest.raises(KFaceError, match="UTF-8"):
        read_config_file(p)


def test_python_310_reads_configs_through_tomli(monkeypatch):
    """Python 3.10 has no tomllib: --config falls back to the `tomli` package (declared for < 3.11)."""
    import sys

    tomllib = pytest.importorskip("tomllib")
    monkeypatch.setattr(sys, "version_info", (3, 10, 13, "final", 0))
    monkeypatch.setitem(sys.modules, "tomllib", None)  # as on 3.10: `import tomllib` fails
    monkeypatch.setitem(sys.modules, "tomli", tomllib)  # tomli is tomllib's origin, same API
    assert read_config_file("demo_mbf")["network"] == "mbf_small"
    monkeypatch.setitem(sys.modules, "tomli", None)
    with pytest.raises(ImportError):
        read_config_file("demo_mbf")


def test_file_then_command_line_and_round_trip(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text('[train]\nbatch-size = 8\nepochs = 3\nmargin = [1.0, 0.3, 0.2]\nloss = "combined"\nflip = false\n')
    cfg = resolve_config(p, {"epochs": 5, "lr": None})  # None: not given on the command line
    assert (cfg.batch_size, cfg.epochs, cfg.margin, cfg.flip) == (8, 5, (1.0, 0.3, 0.2), False)
    assert config_from_dict({**cfg.to_dict(), "num_classes": 7}) == cfg  # derived facts are ignored


@pytest.mark.parametrize(
    "values, message",
    [
        ({"batchsize": 8}, "unknown option 'batchsize'"),
        ({"epochs": 2.5}, "not a valid int"),
        ({"flip": "maybe"}, "not a valid bool"),
        ({"epochs": None}, "cannot be empty"),
    ],
)
def test_bad_keys_and_types_name_the_key(values, message):
    with pytest.raises(KFaceError, match=message):
        normalise_keys(values, "test")


def test_auto_values_and_limits():
    assert resolve_config(overrides={"workers": None}).workers is None  # None: from the cores, resolved by the loop
    with pytest.raises(KFaceError, match="--workers must not be negative"):
        resolve_config(overrides={"workers": -1})
    with pytest.raises(KFaceError, match="--warmup-epochs"):
        resolve_config(overrides={"epochs": 2, "warmup_epochs": 3})
    # insightface's linear rule (0.1 at a global batch of 1024), floored at the fine-tuning lr 0.02
    assert TrainConfig(batch_size=128).base_lr(world_size=8) == pytest.approx(0.1)
    assert TrainConfig(batch_size=32).base_lr() == SGD_MIN_AUTO_LR
    assert TrainConfig(optimizer="adamw", batch_size=32).base_lr() == ADAMW_DEFAULT_LR
    assert TrainConfig(lr=0.5).base_lr() == 0.5


def test_every_field_is_a_train_option(monkeypatch):
    """`kface train` options come from TrainConfig: a new field is a new option, typed and helped."""
    from typer.testing import CliRunner

    from kface_cli.cli import app
    from kface_cli.train import loop

    res = CliRunner().invoke(app, ["train", "--help"], env={"COLUMNS": "200"})
    for name, field in FIELDS.items():
        if name != "workdir":
            assert "--" + name.replace("_", "-") in res.output, name
            assert field.metadata["help"].split()[0] in res.output, name
    seen = {}
    monkeypatch.setattr(loop, "train_from_options", lambda cfg, overrides, resume: seen.update(overrides))
    CliRunner().invoke(
        app,
        [
            "train",
            "--no-flip",
            "--no-channels-last",
            "--margin",
            "0.4",
            "-b",
            "8",
            "--max-steps-per-epoch",
            "2",
            "-w",
            "W",
        ],
    )
    given = {k: v for k, v in seen.items() if v is not None}
    assert given == {
        "flip": False,
        "channels_last": False,
        "margin": "0.4",
        "batch_size": 8,
        "max_steps_per_epoch": 2,
        "workdir": "W",
    }
    assert resolve_config(overrides=given).margin == (0.4,)
