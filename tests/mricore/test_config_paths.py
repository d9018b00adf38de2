"""One rule for relative paths in configs: relative to the config file that holds them (a `--set`
value to the working directory, like any path typed on a command line); loaded configs are frozen."""

import dataclasses
from pathlib import Path

import pytest

from ensemble.config import load_ensemble_config
from mricore.config import load_config
from segment.config import SegmentConfig

ROOT = Path(__file__).resolve().parents[2]


def test_relative_paths_in_a_file_are_relative_to_the_file(tmp_path, monkeypatch):
    (tmp_path / "cfgs").mkdir()
    path = tmp_path / "cfgs" / "c.yaml"
    path.write_text("output_dir: ../runs\ndata:\n  root: data\n  splits_file: s.json\n")
    monkeypatch.chdir(ROOT)  # the working directory plays no part
    cfg = load_config(SegmentConfig, path)
    assert cfg.output_dir == str(tmp_path / "runs")
    assert cfg.data.root == str(tmp_path / "cfgs" / "data") and cfg.data.splits_file == str(tmp_path / "cfgs" / "s.json")


def test_set_paths_are_relative_to_the_working_directory(tmp_path, monkeypatch):
    path = tmp_path / "c.yaml"
    path.write_text("data:\n  root: data\n")
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    cfg = load_config(SegmentConfig, path, ["data.root=here", "output_dir=/abs/runs"])
    assert cfg.data.root == str(tmp_path / "cwd" / "here") and cfg.output_dir == "/abs/runs"


def test_ensemble_members_follow_the_same_rule(tmp_path):
    path = tmp_path / "e" / "ens.yaml"
    path.parent.mkdir()
    path.write_text("members: [../m/fold_0, /abs/fold_1]\n")
    assert load_ensemble_config(path).members == [str(tmp_path / "m" / "fold_0"), "/abs/fold_1"]


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*/*.yaml")), ids=lambda p: p.name)
def test_repository_configs_point_at_the_shared_data_and_the_runs_folder(path, monkeypatch, tmp_path):
    import yaml

    from localize.config import LocalizeConfig

    if "members" in yaml.safe_load(path.read_text()):  # an ensemble config: members in the repository runs/bundle
        assert all(Path(m).parent.parent == ROOT / "runs" / "bundle" for m in load_ensemble_config(path).members)
        return

    monkeypatch.chdir(tmp_path)
    if path.name.startswith("pretrain_"):  # `segment pretrain`: its root, and the segment config it names
        from segment.pretrain import load_pretrain_config

        cfg, seg = load_pretrain_config(path)
        assert Path(cfg.root) == (ROOT.parent / "shared" / "data").resolve() and Path(seg.output_dir).is_relative_to(ROOT)
        return
    cls = LocalizeConfig if path.parent.name == "localize" else SegmentConfig
    cfg = load_config(cls, path)
    assert Path(cfg.data.root) == (ROOT.parent / "shared" / "data").resolve()
    assert Path(cfg.output_dir).resolve().parent in (ROOT, ROOT / "runs")


def test_loaded_configs_are_frozen():
    cfg = load_config(SegmentConfig, ROOT / "configs" / "segment" / "zonal_t2w_2d.yaml")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.predict.tta_flip = True  # noqa: the point of the test
    assert dataclasses.replace(cfg.predict, tta_flip=True).tta_flip and not cfg.predict.tta_flip
