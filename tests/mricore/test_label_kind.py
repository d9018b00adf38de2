"""The type decides the interpolation: a label map (Volume kind "label", set by its reader) is never
interpolated by any resampling entry point, with no flag at the call site; the same file read as an
image is (which is why the kind matters). Real cases, oblique and anisotropic grids."""

import numpy as np
import pytest

from mricore.align import resample_to
from mricore.datasets import load_case, load_dataset, read_ref
from mricore.errors import GeometryError
from mricore.io import read_label, read_nifti
from mricore.preprocess import PreprocessSpec, prepare_label, preprocess, restore
from mricore.volume import Volume

CASES = [
    ("prostate158/001", "zones"),        # oblique 0.47 x 0.47 x 3.15 mm
    ("i2cvb/Patient_68619", "zones"),    # 5-slice slab
]


def _oblique_grid(vol: Volume):
    """Anisotropic 0.9 x 1.3 mm in-plane, rotated 11 degrees about the slice axis (slices kept, so a
    5-slice slab keeps its labelled slices)."""
    a = np.radians(11)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    new_sp = (0.9, 1.3, vol.spacing[2])
    aff = vol.affine.copy()
    aff[:3, :3] = vol.affine[:3, :3] @ rz @ np.diag([n / s for n, s in zip(new_sp, vol.spacing)])
    shape = tuple(max(2, int(round(n * s / t))) for n, s, t in zip(vol.shape, vol.spacing, new_sp))
    return shape, aff


@pytest.mark.parametrize("case,key", CASES)
def test_label_map_is_never_interpolated(data_dir, case, key):
    lab = read_label(data_dir / case / f"{key}.nii.gz")
    values = set(np.unique(lab.array))
    assert lab.is_label and lab.array.dtype == np.uint8
    other = resample_to(lab, _oblique_grid(lab))                       # resampling: the kind decides
    assert other.is_label and other.array.dtype == np.uint8
    assert set(np.unique(other.array)) <= values and len(set(np.unique(other.array))) > 1
    image = read_nifti(data_dir / case / "t2.nii.gz", "T2W")
    prep = preprocess(image, PreprocessSpec(target_spacing=[0.8, 1.1, None], crop_mm=[100.0, 90.0]))
    work = prepare_label(lab, prep)                                    # onto the working grid
    assert set(np.unique(work)) <= values
    back = restore(work[None], prep)[0]                                # and back: an integer map
    assert back.dtype == np.uint8 and set(np.unique(back)) <= values
    # The same file as an image is interpolated: new values appear, so the kind is what protects labels.
    as_image = resample_to(read_nifti(data_dir / case / f"{key}.nii.gz"), _oblique_grid(lab))
    assert not np.all(np.isin(as_image.array, sorted(values)))


def test_every_reader_of_a_case_label_gives_a_label_map(data_dir):
    case = next(c for c in load_dataset(data_dir / "prostate158") if c.case_id == "001")
    assert read_ref(case.labels["zones"], "zones", "001").is_label
    assert not read_ref(case.images["T2W"], "T2W", "001").is_label
    image, label, _ = load_case(case, ["T2W"], "zones")
    assert label.is_label and not image.is_label


def test_a_label_map_must_hold_integers():
    with pytest.raises(GeometryError, match="holds integers"):
        Volume(np.zeros((1, 2, 2, 2), np.float32), np.eye(4), ("zones",), "x", kind="label")


def test_prepare_label_refuses_an_image(data_dir):
    image = read_nifti(data_dir / "prostate158/001/t2.nii.gz", "T2W")
    prep = preprocess(image, PreprocessSpec())
    with pytest.raises(Exception, match="label map"):
        prepare_label(image, prep)
