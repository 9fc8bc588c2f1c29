import math

import pytest

from kface_cli.errors import KFaceError
from kface_cli.train.config import read_config_file, resolve_config


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
