"""The model-folder description (mricore.modelfolder.ModelMeta): one reader, one writer, a format
version; version-1 folders (no `version`, channels and label scheme stored twice; two model.json of
the first bundle are kept in v1_folders/) load unchanged, and rewriting one through the writer keeps
each fact once."""

import json
import shutil
from pathlib import Path

import pytest

from mricore.errors import InputError
from mricore.modelfolder import FORMAT_VERSION, ModelMeta, read_model, write_model
from mricore.preprocess import PreprocessSpec

V1 = Path(__file__).resolve().parent / "v1_folders"  # model.json of two members of the first bundle


def _v1_folder(tmp_path, name) -> Path:
    """A version-1 folder as the first bundle shipped it: its model.json, and the network file (empty:
    reading the description never opens it)."""
    dst = tmp_path / name
    dst.mkdir()
    shutil.copy(V1 / name / "model.json", dst / "model.json")
    (dst / ("model.onnx" if name.startswith("onnx") else "weights.pt")).write_bytes(b"")
    return dst


@pytest.mark.parametrize("name", ["unet2d_fold0", "onnx_unet2d_fold0"])
def test_version_1_folders_load(tmp_path, name):
    folder = _v1_folder(tmp_path, name)
    old = json.loads((folder / "model.json").read_text())
    assert "version" not in old
    meta = read_model(folder, "segmenter")
    assert meta.version == FORMAT_VERSION
    assert meta.channels == old["channels"] and meta.label_scheme == old["label_scheme"]
    assert meta.model == old["model"] and meta.patch == old["patch"] and meta.validation == old["validation"]
    assert (meta.onnx is not None) == ("onnx" in old)
    assert meta.preprocess.crop_centre == "volume"  # before two stages: crops around the volume centre


def test_rewriting_a_version_1_folder_stores_each_fact_once(tmp_path):
    src = _v1_folder(tmp_path, "unet2d_fold0")
    meta = read_model(src)
    write_model(tmp_path / "m", meta)
    new = json.loads((tmp_path / "m" / "model.json").read_text())
    assert new["version"] == FORMAT_VERSION and "channels" not in new and "label_scheme" not in new
    assert new["preprocess"]["channels"] == ["T2W"] and new["model"]["label_scheme"] == "multiclass"
    assert new["software_version"] == json.loads((src / "model.json").read_text())["software_version"]
    shutil.copy(src / "weights.pt", tmp_path / "m" / "weights.pt")
    assert read_model(tmp_path / "m") == meta


def _folder(tmp_path, data) -> Path:
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "weights.pt").write_bytes(b"")
    (tmp_path / "m" / "model.json").write_text(json.dumps(data))
    return tmp_path / "m"


def _good() -> dict:
    return ModelMeta("segmenter", {"name": "unet", "label_scheme": "multiclass"}, PreprocessSpec(), patch=[32, 32]).to_dict()


BAD = {
    # a newer format than this software reads
    "newer version": ({"version": FORMAT_VERSION + 1}, "format version"),
    # an unknown kind of folder
    "unknown kind": ({"kind": "detector"}, "'kind'"),
    # a field this version does not know (typo): named, with the close match
    "unknown field": ({"validaton": {}}, "did you mean 'validation'"),
    # version 1's second copy of the channels disagreeing with the spec
    "disagreeing copy": ({"version": 1, "channels": ["ADC"]}, "'channels' disagrees"),
    # a required field of the wrong JSON type
    "patch not a list": ({"patch": 32}, "'patch' must be a JSON list"),
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_model_json_is_one_line_naming_the_field(tmp_path, name):
    change, needle = BAD[name]
    with pytest.raises(InputError, match=needle) as e:
        read_model(_folder(tmp_path, {**_good(), **change}))
    assert "\n" not in str(e.value) and "model.json" in str(e.value)


def test_kind_is_checked_when_asked(tmp_path):
    with pytest.raises(InputError, match="not a lesion_classifier model folder"):
        read_model(_folder(tmp_path, _good()), "lesion_classifier")
