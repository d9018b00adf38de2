"""Fixtures for the mricore tests (helpers live in mricore_helpers.py)."""

import pytest

from mricore.io import read_label, read_nifti
from mricore_helpers import crop, gland_box, save


@pytest.fixture(scope="session")
def px0000_crop(data_dir, tmp_path_factory):
    """ProstateX-0000 as a small case folder: T2W and AI zones cropped to 64 mm around the gland,
    ADC and DWI untouched (own 2 mm grid). Shared by alignment and dataset tests."""
    src = data_dir / "prostatex" / "ProstateX-0000"
    out = tmp_path_factory.mktemp("px0000") / "ProstateX-0000"
    lo, hi = gland_box(data_dir, "prostatex/ProstateX-0000", "wg_ai")
    for stem, read in (("t2", read_nifti), ("zones_ai", read_label)):
        v = crop(read(src / f"{stem}.nii.gz"), lo, hi)
        save(v.array[0], v.affine, out / f"{stem}.nii.gz")
    for stem in ("adc", "dwi"):
        (out / f"{stem}.nii.gz").write_bytes((src / f"{stem}.nii.gz").read_bytes())
    return out
