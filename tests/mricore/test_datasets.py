"""mricore.datasets: the three layouts (case folders, MSD, datalists) and load_case checks."""

import json

import numpy as np
import pytest

from mricore_helpers import crop, save
from mricore.align import resample_to
from mricore.datasets import image_from_inputs, load_case, load_dataset
from mricore.errors import GeometryError, InputError
from mricore.io import read_label, read_nifti


def test_case_folder_layout_of_shared_data(data_dir):
    cases = load_dataset(data_dir)
    by_id = {c.case_id: c for c in cases}
    # README: 3 prostate158, 2 i2cvb, 1 promise12, 6 prostatex, 8 unlabelled cases.
    counts = {d: sum(c.dataset == d for c in cases) for d in ("prostate158", "i2cvb", "promise12", "prostatex", "unlabelled")}
    assert counts == {"prostate158": 3, "i2cvb": 2, "promise12": 1, "prostatex": 6, "unlabelled": 8}
    px = by_id["ProstateX-0000"]
    assert set(px.images) == {"T2W", "ADC", "DWI"} and {"zones_ai", "wg_ai", "lesion"} <= set(px.labels)
    assert "zones" not in px.labels            # AI zones never pose as expert labels
    assert set(by_id["001"].labels) >= {"zones", "lesion"} and by_id["001"].patient_id == "001"
    assert set(by_id["PICAI-10000_1000000"].images) == {"ADC", "DWI"}   # no T2 there


def test_single_case_folder_and_dataset_folder(data_dir):
    assert [c.case_id for c in load_dataset(data_dir / "prostate158/001")] == ["001"]
    assert [c.case_id for c in load_dataset(data_dir / "i2cvb")] == ["Patient_52209036", "Patient_68619"]


def test_load_case_on_case_folder_stacks_on_t2_grid(px0000_crop):
    case = load_dataset(px0000_crop)[0]
    image, label, info = load_case(case, ["T2W", "ADC", "DWI"], "zones_ai")
    t2 = read_nifti(px0000_crop / "t2.nii.gz")
    assert image.channels == ("T2W", "ADC", "DWI") and image.shape == t2.shape
    np.testing.assert_array_equal(image.affine, t2.affine)
    assert label.array.dtype == np.uint8 and label.shape == t2.shape
    assert {c: e["same_grid"] for c, e in info["alignment"].items()} == {"ADC": False, "DWI": False}
    assert all("nmi" in e for e in info["alignment"].values())


def _msd(tmp_path, px0000_crop, four_d: bool):
    """A two-case MSD folder (the case, and the same case under a second id) from the cropped
    ProstateX-0000, ADC resampled onto the T2W grid as in Task05_Prostate."""
    t2 = read_nifti(px0000_crop / "t2.nii.gz", "T2W")
    adc = resample_to(read_nifti(px0000_crop / "adc.nii.gz", "ADC"), t2)
    zones = read_label(px0000_crop / "zones_ai.nii.gz")
    root = tmp_path / "Task05_Prostate"
    training = []
    for cid in ("prostate_00", "prostate_01"):
        if four_d:
            save(np.stack([t2.array[0], adc.array[0]], axis=-1), t2.affine, root / "imagesTr" / f"{cid}.nii.gz")
        else:
            save(t2.array[0], t2.affine, root / "imagesTr" / f"{cid}_0000.nii.gz")
            save(adc.array[0], t2.affine, root / "imagesTr" / f"{cid}_0001.nii.gz")
        save(zones.array[0], t2.affine, root / "labelsTr" / f"{cid}.nii.gz")
        training.append({"image": f"./imagesTr/{cid}.nii.gz", "label": f"./labelsTr/{cid}.nii.gz"})
    meta = {"name": "Prostate", "modality": {"0": "T2", "1": "ADC"},
            "labels": {"0": "background", "1": "TZ", "2": "PZ"}, "training": training}
    (root / "dataset.json").write_text(json.dumps(meta))
    return root, t2, adc, zones


@pytest.mark.parametrize("four_d", [True, False], ids=["4d-images", "channel-files"])
def test_msd_layout(tmp_path, px0000_crop, four_d):
    root, t2, adc, zones = _msd(tmp_path, px0000_crop, four_d)
    cases = load_dataset(root)
    assert [c.case_id for c in cases] == ["prostate_00", "prostate_01"]
    assert cases[0].dataset == "Prostate"
    image, label, info = load_case(cases[0], ["T2W", "ADC"], "zones")
    np.testing.assert_array_equal(image.channel("T2W"), t2.array[0])
    np.testing.assert_allclose(image.channel("ADC"), adc.array[0])
    np.testing.assert_array_equal(label.array, zones.array)
    assert info["alignment"]["ADC"]["same_grid"]


def test_msd_missing_channel_file(tmp_path, px0000_crop):
    root, *_ = _msd(tmp_path, px0000_crop, four_d=False)
    (root / "imagesTr" / "prostate_01_0001.nii.gz").unlink()
    with pytest.raises(InputError, match="prostate_01_0001"):
        load_dataset(root)


def test_msd_invalid_dataset_json(tmp_path):
    (tmp_path / "dataset.json").write_text("{not json")
    with pytest.raises(InputError, match="not valid JSON"):
        load_dataset(tmp_path)


def test_msd_4d_image_with_fewer_volumes_than_modalities(tmp_path, px0000_crop):
    root, t2, *_ = _msd(tmp_path, px0000_crop, four_d=True)
    save(t2.array[0][..., None], t2.affine, root / "imagesTr" / "prostate_00.nii.gz")  # 1 volume, 2 modalities
    case = load_dataset(root)[0]
    with pytest.raises(InputError, match="channel 1"):
        load_case(case, ["T2W", "ADC"])


def _rows(data_dir):
    return [
        {"patient_id": "P158-001", "case_id": "001", "T2W": str(data_dir / "prostate158/001/t2.nii.gz"),
         "zones": str(data_dir / "prostate158/001/zones.nii.gz")},
        {"patient_id": "I2CVB-68619", "case_id": "68619", "T2W": str(data_dir / "i2cvb/Patient_68619/t2.nii.gz"),
         "zones": str(data_dir / "i2cvb/Patient_68619/zones.nii.gz")},
    ]


def _write_csv(path, rows):
    keys = list(rows[0])
    path.write_text("\n".join([",".join(keys)] + [",".join(r.get(k, "") for k in keys) for r in rows]) + "\n")


@pytest.mark.parametrize("fmt", ["csv", "json"])
def test_datalist_with_patient_id(tmp_path, data_dir, fmt):
    path = tmp_path / f"list.{fmt}"
    rows = _rows(data_dir)
    _write_csv(path, rows) if fmt == "csv" else path.write_text(json.dumps(rows))
    cases = load_dataset(path)
    assert [(c.case_id, c.patient_id) for c in cases] == [("001", "P158-001"), ("68619", "I2CVB-68619")]
    assert set(cases[0].images) == {"T2W"} and set(cases[0].labels) == {"zones"}
    image, label, _ = load_case(cases[1], ["T2W"], "zones")
    assert label.shape == image.shape == (384, 308, 5)


def test_datalist_relative_paths_are_relative_to_the_file(tmp_path, data_dir):
    sub = tmp_path / "lists"
    sub.mkdir()
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "t2.nii.gz").write_bytes((data_dir / "i2cvb/Patient_68619/t2.nii.gz").read_bytes())
    (sub / "list.json").write_text(json.dumps([{"patient_id": "p1", "T2W": "../a/t2.nii.gz"}]))
    case = load_dataset(sub / "list.json")[0]
    assert case.images["T2W"].path == (tmp_path / "a" / "t2.nii.gz").resolve()


@pytest.mark.parametrize("fmt", ["csv", "json"])
def test_datalist_without_patient_id(tmp_path, data_dir, fmt):
    rows = [{k: v for k, v in r.items() if k != "patient_id"} for r in _rows(data_dir)]
    path = tmp_path / f"list.{fmt}"
    _write_csv(path, rows) if fmt == "csv" else path.write_text(json.dumps(rows))
    with pytest.raises(InputError, match="patient_id") as e:
        load_dataset(path)
    assert "row 1" in str(e.value)


def test_missing_dataset_path(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_dataset(tmp_path / "nope")


def test_folder_without_cases(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no cases found"):
        load_dataset(tmp_path)


def test_unknown_channel_name(data_dir):
    case = load_dataset(data_dir / "prostate158/001")[0]
    with pytest.raises(InputError, match="FLAIR") as e:
        load_case(case, ["T2W", "FLAIR"])
    assert "files:" in str(e.value)   # the fix: map the name in the config


def test_missing_channel_is_skipped_only_when_optional(data_dir):
    case = load_dataset(data_dir / "prostate158/001")[0]
    image, _, _ = load_case(case, ["T2W", "ADC"], optional=True)
    assert image.channels == ("T2W",)


def test_label_on_another_grid_is_rejected(tmp_path, data_dir):
    src = data_dir / "i2cvb/Patient_68619"
    case_dir = tmp_path / "c1"
    case_dir.mkdir()
    (case_dir / "t2.nii.gz").write_bytes((src / "t2.nii.gz").read_bytes())
    z = crop(read_label(src / "zones.nii.gz"), (0, 0, 0), (380, 308, 5))  # 4 columns short
    save(z.array[0], z.affine, case_dir / "zones.nii.gz")
    with pytest.raises(GeometryError, match="label grid must equal its image grid"):
        load_case(load_dataset(case_dir)[0], ["T2W"], "zones")


def test_missing_label_key(data_dir):
    case = load_dataset(data_dir / "promise12/Case00")[0]
    with pytest.raises(InputError, match="'zones' not found"):
        load_case(case, ["T2W"], "zones")


def test_image_from_inputs_names_channels_from_file_stems(data_dir):
    px = data_dir / "prostatex/ProstateX-0000"
    case = image_from_inputs([px / "t2.nii.gz", px / "adc.nii.gz"], ["T2W", "ADC"])
    assert case.case_id == "ProstateX-0000" and set(case.images) == {"T2W", "ADC"}
    with pytest.raises(InputError, match="does not exist"):
        image_from_inputs([px / "t3.nii.gz"], ["T2W"])


def test_dicom_series_folders_are_told_from_datasets(data_dir):
    from mricore.datasets import is_dicom_folder

    assert is_dicom_folder(data_dir / "dicom/ProstateX-0000/4.000000-t2tsetra-00702")
    assert not is_dicom_folder(data_dir / "prostate158")          # case folders and a manifest.json
    assert not is_dicom_folder(data_dir / "prostate158" / "001")  # NIfTI files
    assert not is_dicom_folder(data_dir / "dicom/ProstateX-0000")  # a folder of series
