"""mricore.config: typed YAML with close-match hints, type checks, --set overrides, cross-field rules,
and the resolved copy; SegmentConfig (segment/config.py) is the main user."""

from pathlib import Path

import pytest
import yaml

from mricore.config import ConfigError, load_config, parse_overrides, save_config, to_dict
from segment.config import SegmentConfig

CONFIGS = sorted(p for p in (Path(__file__).resolve().parents[2] / "configs" / "segment").glob("*.yaml")
                 if not p.name.startswith("pretrain_"))  # `segment pretrain` configs: tests/segment/test_pretrain.py


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_segment_configs_load(path):
    cfg = load_config(SegmentConfig, path)
    raw = yaml.safe_load(path.read_text())
    assert cfg.name == raw["name"]
    assert cfg.train.epochs == raw["train"]["epochs"]   # values land in the typed fields


def test_at_least_one_shipped_config():
    assert CONFIGS


def _write(tmp_path, text):
    p = tmp_path / "cfg.yaml"
    p.write_text(text)
    return p


UNKNOWN_KEYS = [
    ("train:\n  epoch: 5\n", "train.epoch", "train.epochs"),            # typo in a nested key
    ("preprocess:\n  target_spacng: [1, 1, 3]\n", "preprocess.target_spacng", "preprocess.target_spacing"),
    ("nmae: x\n", "nmae", "name"),                                       # typo at the top level
    ("preprocess:\n  norm:\n    ADC:\n      methd: fixed\n", "preprocess.norm.ADC.methd", "preprocess.norm.ADC.method"),
]


@pytest.mark.parametrize("text,key,hint", UNKNOWN_KEYS)
def test_unknown_key_names_file_dotted_key_and_close_match(tmp_path, text, key, hint):
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        load_config(SegmentConfig, path)
    msg = str(e.value)
    assert str(path) in msg and f"unknown key '{key}'" in msg and f"did you mean '{hint}'?" in msg


WRONG_TYPES = [
    ("train:\n  epochs: ten\n", "train.epochs", "integer"),
    ("train:\n  epochs: 2.5\n", "train.epochs", "integer"),
    ("train:\n  lr: fast\n", "train.lr", "number"),
    ("train:\n  lr: 1e-3x\n", "train.lr", "number"),                    # not exponent notation
    ("train:\n  amp: 1\n", "train.amp", "true or false"),                # 1 is not a bool
    ("train:\n  patch: 160\n", "train.patch", "list"),
    ("model:\n  spatial_dims: 4\n", "model.spatial_dims", "one of"),     # Literal[2, 3]
    ("train:\n  schedule: linear\n", "train.schedule", "one of"),
    ("data: [a, b]\n", "data", "mapping"),
    ("preprocess:\n  target_spacing: [0.6, x, null]\n", "preprocess.target_spacing[1]", "number"),
]


@pytest.mark.parametrize("text,key,rule", WRONG_TYPES)
def test_wrong_type_fails_naming_the_key(tmp_path, text, key, rule):
    with pytest.raises(ConfigError, match=rule) as e:
        load_config(SegmentConfig, _write(tmp_path, text))
    assert key in str(e.value)


CROSS_FIELD = [
    ("model:\n  spatial_dims: 3\ntrain:\n  patch: [160, 160]\n", "train.patch needs 3"),
    ("model:\n  context: 2\n  spatial_dims: 3\ntrain:\n  patch: [64, 64, 16]\n", "2.5D"),
    ("model:\n  channels: [8, 16]\n  strides: [2, 2]\n", "one entry fewer"),
    ("train:\n  class_weights: [1.0, 2.0]\n", "one weight per output"),    # multiclass has 3 outputs
    ("data:\n  folds: 1\n", "folds must be >= 2"),
    ("augment:\n  flip_p: 1.5\n", "probability"),
    ("preprocess:\n  crop_mm: [-1, 100]\n", "crop_mm"),
]


@pytest.mark.parametrize("text,match", CROSS_FIELD)
def test_invalid_cross_field_rules_fail(tmp_path, text, match):
    with pytest.raises(ConfigError, match=match):
        load_config(SegmentConfig, _write(tmp_path, text))


def test_set_overrides_are_typed_and_applied(tmp_path):
    path = _write(tmp_path, "train:\n  epochs: 30\n")
    cfg = load_config(SegmentConfig, path, ["train.epochs=5", "model.name=dynunet", "data.register=true",
                                            "preprocess.crop_mm=null", "train.lr=1e-3"])
    assert (cfg.train.epochs, cfg.model.name, cfg.data.register, cfg.preprocess.crop_mm) == (5, "dynunet", True, None)
    assert cfg.train.lr == pytest.approx(1e-3)
    assert cfg.train.batch_size == SegmentConfig().train.batch_size   # untouched values keep defaults


@pytest.mark.parametrize("override,match", [
    ("train.epochs=abc", "must be an integer"),       # wrong type through --set
    ("train.epoch=5", "did you mean 'train.epochs'"),  # unknown key through --set
    ("train.epochs", "key=value"),                     # no '='
])
def test_bad_overrides(tmp_path, override, match):
    with pytest.raises(ConfigError, match=match) as e:
        load_config(SegmentConfig, _write(tmp_path, "name: x\n"), [override])
    assert "--set" in str(e.value)


@pytest.mark.parametrize("text,value", [
    ("train:\n  lr: 1e-3\n", 1e-3),      # YAML 1.1 leaves this a string; still a number here
    ("train:\n  lr: 2.5E-4\n", 2.5e-4),
    ("train:\n  lr: 3\n", 3.0),          # an int where a float is expected
])
def test_floats_in_exponent_notation(tmp_path, text, value):
    lr = load_config(SegmentConfig, _write(tmp_path, text)).train.lr
    assert isinstance(lr, float) and lr == pytest.approx(value)


def test_parse_overrides_nests_dotted_keys():
    assert parse_overrides(["a.b.c=1", "a.d=[1, 2]", "e=x"]) == {"a": {"b": {"c": 1}, "d": [1, 2]}, "e": "x"}


def test_resolved_config_saved_and_reloads_equal(tmp_path):
    cfg = load_config(SegmentConfig, CONFIGS[0], ["train.epochs=3"])
    path = save_config(cfg, tmp_path / "run" / "config.yaml")
    again = load_config(SegmentConfig, path)
    assert again == cfg and to_dict(again)["train"]["epochs"] == 3


def test_missing_and_invalid_yaml(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(SegmentConfig, tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(SegmentConfig, _write(tmp_path, "train: [1, 2\n"))
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(SegmentConfig, _write(tmp_path, "- a\n- b\n"))


def test_defaults_without_a_file():
    assert load_config(SegmentConfig) == SegmentConfig()
