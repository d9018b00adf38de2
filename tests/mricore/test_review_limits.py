"""Fitted review limits (mricore.review_limits): fitted on measured rows, written once into an
ensemble.yaml's review section, refused when they would replace others without --force."""

import json

import pytest
import yaml

from mricore import review_limits as rl
from mricore.errors import ConfigError, InputError, OutputExistsError


def row(case, half="A", kind="normal", failure=False, **features):
    base = {"dark_fraction": 0.2, "sharpness": 0.7, "noise": 0.1, "nonuniformity": 1.1, "disagreement": 0.1,
            "entropy": 0.3, "pz_tz_intensity": 1.5}
    return {"case": case, "half": half, "kind": kind, "failure": failure, "features": {**base, **features}}


ROWS = [
    row("a/1", noise=0.12, entropy=0.35),         # the noisiest, most uncertain normal study of half A
    row("a/2", dark_fraction=0.15, pz_tz_intensity=None),  # no PZ/TZ ratio: skipped for that limit
    row("a/3", kind="noise", noise=0.9),          # a corrupted variant: not a calibration study
    row("a/4", failure=True, disagreement=0.8),   # a normal study that failed: left out
    row("philips/1", noise=0.5),                  # an uncorrupted Philips study: no outcome, left out
    row("b/1", half="B", sharpness=0.1),          # the other half
]
HEADER = "# written by ensemble pack\n# second line\n"


def write_config(tmp_path, review):
    path = tmp_path / "ensemble.yaml"
    path.write_text(HEADER + yaml.safe_dump({"members": ["m"], "review": review, "tta": False}, sort_keys=False))
    return path


def test_fit_takes_the_extreme_normal_study_with_a_margin():
    limits = rl.fit_limits(ROWS, "A")
    assert set(limits) == set(rl.FITTED)
    assert limits["max_noise"] == round(0.12 * 1.1, 4) and limits["max_entropy"] == round(0.35 * 1.1, 4)
    assert limits["min_dark_fraction"] == round(0.15 / 1.1, 4)
    assert limits["max_disagreement"] == round(0.1 * 1.1, 4)     # the failed study's 0.8 is not used
    assert limits["min_pz_tz_intensity"] == round(1.5 / 1.1, 4)  # a/2's None is skipped
    assert rl.fit_limits(ROWS, "B")["min_sharpness"] == round(0.1 / 1.1, 4)


def test_fit_without_a_calibration_study_is_a_user_error():
    with pytest.raises(ConfigError, match="no uncorrupted non-failing study"):
        rl.fit_limits([row("a/1", kind="noise")], "A")


def test_write_fills_the_review_section_and_keeps_the_rest(tmp_path):
    path = write_config(tmp_path, {"max_tilt_deg": 45.0, "max_noise": None})
    limits = rl.fit_limits(ROWS, "A")
    rl.write_limits(path, limits)
    text = path.read_text()
    assert text.startswith(HEADER)
    data = yaml.safe_load(text)
    assert data["members"] == ["m"] and data["tta"] is False and data["review"]["max_tilt_deg"] == 45.0
    assert {k: data["review"][k] for k in limits} == limits
    before = path.read_text()
    rl.write_limits(path, limits)  # the same limits again: allowed, nothing changes
    assert path.read_text() == before


# Each refusal leaves the file as it was.
ILL_CASES = [
    ({"max_noise": 0.2}, {"max_noise": 0.3}, OutputExistsError, "pass --force"),  # replaces a fitted limit
    ({}, {"max_tilt_deg": 10.0}, ConfigError, "only fitted limits"),              # not a fitted limit
    ({}, {"max_entropy": 1.5}, ConfigError, "review.max_entropy"),                # out of range
]


@pytest.mark.parametrize("review,limits,error,needle", ILL_CASES)
def test_write_refusals(tmp_path, review, limits, error, needle):
    path = write_config(tmp_path, review)
    before = path.read_text()
    with pytest.raises(error, match=needle):
        rl.write_limits(path, limits)
    assert path.read_text() == before


def test_write_replaces_with_force_and_needs_the_file(tmp_path):
    path = write_config(tmp_path, {"max_noise": 0.2})
    rl.write_limits(path, {"max_noise": 0.3}, force=True)
    assert yaml.safe_load(path.read_text())["review"]["max_noise"] == 0.3
    with pytest.raises(InputError, match="config file not found"):
        rl.write_limits(tmp_path / "none.yaml", {"max_noise": 0.3})


def test_command_fits_and_writes(tmp_path, capsys):
    rows = tmp_path / "rows.json"
    rows.write_text(json.dumps({"rows": ROWS}))
    path = write_config(tmp_path, {})
    assert rl.main([str(rows), "--config", str(path)]) == 0
    assert yaml.safe_load(path.read_text())["review"]["max_noise"] == round(0.12 * 1.1, 4)
    assert rl.main([str(tmp_path / "none.json"), "--config", str(path)]) == 2
    assert "measured rows not found" in capsys.readouterr().err


def test_config_without_fitted_limits_is_valid():
    cfg = rl.ReviewConfig()
    cfg.validate()
    assert all(getattr(cfg, name) is None for name in rl.FITTED)
