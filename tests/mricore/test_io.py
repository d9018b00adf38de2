"""mricore.io: NIfTI round trips on real oblique LPS cases, DICOM series against their NIfTI
conversion, and the errors for bad files."""

import nibabel as nib
import numpy as np
import pytest

from mricore.errors import GeometryError, InputError, OutputExistsError
from mricore.dicom import read_dicom_series
from mricore.io import read_label, read_nifti, write_nifti

ROUND_TRIP = [
    ("prostate158/001/t2.nii.gz", False),          # oblique (17.7 deg), float32 image
    ("prostate158/001/zones.nii.gz", True),        # uint8 label map on the same grid
    ("prostatex/ProstateX-0000/t2.nii.gz", False),  # oblique T2W
    ("prostatex/ProstateX-0000/adc.nii.gz", False),  # ADC on its own 2 mm grid
    ("prostatex/ProstateX-0002/t2.nii.gz", False),
    ("prostatex/ProstateX-0004/t2.nii.gz", False),  # 4.5 mm slices
    ("i2cvb/Patient_68619/t2.nii.gz", False),       # oblique slab, 5 slices
    ("i2cvb/Patient_52209036/zones.nii.gz", True),
]


@pytest.mark.parametrize("rel,label", ROUND_TRIP)
def test_nifti_round_trip_keeps_header_geometry_and_dtype(data_dir, tmp_path, rel, label):
    src_path = data_dir / rel
    src = nib.load(str(src_path))
    assert nib.aff2axcodes(src.affine) == ("L", "P", "S")
    vol = (read_label if label else read_nifti)(src_path)
    out = nib.load(str(write_nifti(vol.array[0], vol, tmp_path / "out.nii.gz")))
    # Matrices and codes must be identical, not just close.
    np.testing.assert_array_equal(out.affine, src.affine)
    q_out, qc_out = out.header.get_qform(coded=True)
    q_src, qc_src = src.header.get_qform(coded=True)
    np.testing.assert_array_equal(q_out, q_src)
    np.testing.assert_array_equal(out.header.get_sform(), src.header.get_sform())
    assert (int(qc_out), int(out.header["sform_code"])) == (int(qc_src), int(src.header["sform_code"]))
    for key in ("quatern_b", "quatern_c", "quatern_d", "qoffset_x", "qoffset_y", "qoffset_z", "pixdim"):
        np.testing.assert_array_equal(out.header[key], src.header[key], err_msg=key)
    assert out.get_data_dtype() == src.get_data_dtype()
    np.testing.assert_array_equal(np.asanyarray(out.dataobj), np.asanyarray(src.dataobj))


def test_write_without_reference_header_codes_scanner(tmp_path):
    aff = np.diag([-0.5, -0.5, 3.0, 1.0])
    out = nib.load(str(write_nifti(np.zeros((4, 4, 2), np.uint8), None, tmp_path / "x.nii.gz", affine=aff)))
    np.testing.assert_array_equal(out.affine, aff)
    assert int(out.header["qform_code"]) == 1 and int(out.header["sform_code"]) == 1


def test_write_refuses_overwrite_without_force(data_dir, tmp_path):
    vol = read_nifti(data_dir / "i2cvb/Patient_68619/t2.nii.gz")
    path = write_nifti(vol.array[0], vol, tmp_path / "a.nii.gz")
    before = path.read_bytes()
    with pytest.raises(OutputExistsError, match="--force"):
        write_nifti(vol.array[0] * 0, vol, path)
    assert path.read_bytes() == before
    write_nifti(vol.array[0] * 0, vol, path, force=True)
    assert not np.asarray(nib.load(str(path)).dataobj).any()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.nii.gz"]  # no temporary left behind


def test_write_rejects_array_off_the_reference_grid(data_dir, tmp_path):
    vol = read_nifti(data_dir / "i2cvb/Patient_68619/t2.nii.gz")
    with pytest.raises(GeometryError, match="reference grid"):
        write_nifti(np.zeros((3, 3, 3)), vol, tmp_path / "a.nii.gz")
    assert not list(tmp_path.iterdir())


# --------------------------------------------------------------------------------------- DICOM

DICOM_VS_NIFTI = [
    ("4.000000-t2tsetra-00702", "t2"),                        # axial T2W, 0.5 mm, oblique
    ("7.000000-ep2ddifftraDYNDISTADC-48780", "adc"),          # ADC, 2 mm grid
    ("8.000000-ep2ddifftraDYNDISTCALCBVAL-83202", "dwi"),     # scanner-computed high b
]


@pytest.mark.parametrize("series,stem", DICOM_VS_NIFTI)
def test_dicom_series_matches_nifti_conversion(data_dir, series, stem):
    dcm = read_dicom_series(data_dir / "dicom/ProstateX-0000" / series)
    ref = read_nifti(data_dir / "prostatex/ProstateX-0000" / f"{stem}.nii.gz")
    assert dcm.shape == ref.shape
    np.testing.assert_array_equal(dcm.array, ref.array)   # voxel for voxel
    np.testing.assert_allclose(dcm.affine, ref.affine, atol=1e-3)  # mm
    assert nib.aff2axcodes(dcm.affine) == ("L", "P", "S")


def test_dicom_missing_slice_is_rejected(data_dir):
    folder = data_dir / "dicom/ProstateX-0000_missing-slice/8.000000-ep2ddifftraDYNDISTCALCBVAL-83202"
    with pytest.raises(InputError, match="slice is missing") as e:
        read_dicom_series(folder)
    assert "6.00 mm" in str(e.value) and "3.00 mm" in str(e.value) and str(folder) in str(e.value)


def test_dicom_trace_series_with_three_b_values_is_rejected(data_dir):
    # 57 files = 3 b-values x 19 positions: stacking them would give a 57-slice garbage volume.
    with pytest.raises(InputError, match="mixes series"):
        read_dicom_series(data_dir / "dicom/ProstateX-0000/6.000000-ep2ddifftraDYNDIST-69284")


def test_dicom_folder_without_series(tmp_path):
    (tmp_path / "notes.txt").write_text("not dicom")
    with pytest.raises(InputError, match="no DICOM series"):
        read_dicom_series(tmp_path)


def test_dicom_path_that_is_a_file(data_dir):
    with pytest.raises(InputError, match="folder of DICOM"):
        read_dicom_series(data_dir / "prostatex/ProstateX-0000/t2.nii.gz")


def test_dicom_missing_folder(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        read_dicom_series(tmp_path / "nope")
