"""The gland reference distribution (mricore.gland_reference): the shipped file is what
`make gland-reference` makes from the data, and the command refuses what it should."""

import pytest

from mricore import gland_reference as gr


def test_shipped_reference_is_what_the_command_makes(data_dir):
    ref = gr.load_reference()
    assert ref["n"] == len(ref["maps"]) >= 30
    assert ref["WG_ml"]["min"] == min(m["WG_ml"] for m in ref["maps"])
    assert gr.build_reference(data_dir) == ref  # `make gland-reference` writes the committed file again


def test_gland_statistics_of_a_tiny_map():
    import numpy as np

    label = np.zeros((4, 4, 4), np.uint8)
    label[:2] = 1  # 32 TZ voxels
    label[2] = 2   # 16 PZ voxels
    s = gr.gland_statistics(label, np.diag([2.0, 2.0, 2.5, 1.0]))  # 10 mm^3 per voxel
    assert s == pytest.approx({"WG_ml": 0.48, "TZ_share": 2 / 3})
    assert gr.gland_statistics(np.zeros_like(label), np.eye(4))["TZ_share"] == 0.0  # empty: no TZ share


# The command's user errors: exit 2, one line, nothing written.
ILL_CASES = [
    (["--data", "{tmp}/nothing"], "no msd_labels/ or prostate158/ zone maps"),  # no source maps
    (["--out", "{tmp}/exists.json"], "pass --force"),                          # never overwritten silently
]


@pytest.mark.parametrize("args,needle", ILL_CASES)
def test_command_user_errors(data_dir, tmp_path, capsys, args, needle):
    (tmp_path / "exists.json").write_text("{}")
    argv = ["--data", str(data_dir), "--out", str(tmp_path / "new.json")] + [a.format(tmp=tmp_path) for a in args]
    assert gr.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1
    assert not (tmp_path / "new.json").exists() and (tmp_path / "exists.json").read_text() == "{}"


def test_command_writes_the_reference(data_dir, tmp_path):
    import json

    assert gr.main(["--data", str(data_dir), "--out", str(tmp_path / "ref.json")]) == 0
    assert json.loads((tmp_path / "ref.json").read_text()) == gr.load_reference()
