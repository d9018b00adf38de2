"""Bad input, one test each: through the library (typed UserError naming input, rule, value, fix) and
through a CLI `main([...])` (exit code 2, one line on stderr, no traceback, nothing written)."""

import os
import signal
import sys

import nibabel as nib
import numpy as np
import pytest

from mricore.errors import InputError, UserError, run_cli
from mricore.io import read_label, read_nifti
from mricore.outputs import staged_dir
from mricore.preprocess import PreprocessSpec
from mricore_helpers import crop, save

# ------------------------------------------------------------------------------ library


def _bad_files(tmp_path, data_dir):
    """name -> (path, reader, expected rule)."""
    t2 = read_nifti(data_dir / "i2cvb/Patient_68619/t2.nii.gz")
    small = crop(t2, (150, 120, 0), (182, 152, 5))
    nan = small.array[0].copy()
    nan[3, 4, 1] = np.nan
    inf = small.array[0].copy()
    inf[0, 0, 0] = np.inf
    frac = np.full(small.shape, 0.5, np.float32)
    (tmp_path / "notes.nii.gz").write_text("this is not a NIfTI file")
    return {
        "missing file": (tmp_path / "absent.nii.gz", read_nifti, "does not exist"),
        "non-NIfTI file": (tmp_path / "notes.nii.gz", read_nifti, "not a readable NIfTI"),
        "4D where 3D expected": (save(np.stack([small.array[0]] * 2, -1), small.affine, tmp_path / "4d.nii.gz"),
                                 read_nifti, "expected a 3D volume"),
        "NaN voxels": (save(nan, small.affine, tmp_path / "nan.nii.gz"), read_nifti, "1 NaN/Inf voxels"),
        "Inf voxels": (save(inf, small.affine, tmp_path / "inf.nii.gz"), read_nifti, "1 NaN/Inf voxels"),
        "fractional labels": (save(frac, small.affine, tmp_path / "frac.nii.gz"), read_label, "whole numbers"),
        "a folder": (tmp_path, read_nifti, "expected a NIfTI file"),
    }


BAD_FILES = ["missing file", "non-NIfTI file", "4D where 3D expected", "NaN voxels", "Inf voxels",
             "fractional labels", "a folder"]


@pytest.mark.parametrize("name", BAD_FILES)
def test_read_nifti_rejects(tmp_path, data_dir, name):
    path, reader, rule = _bad_files(tmp_path, data_dir)[name]
    with pytest.raises(InputError, match=rule) as e:
        reader(path)
    msg = str(e.value)
    assert str(path) in msg and "\n" not in msg
    assert "fix:" in msg or name == "missing file"


def test_run_cli_turns_user_errors_into_one_line_and_exit_2(capsys):
    def bad():
        raise InputError("x.nii.gz", "voxels must be finite", "3 NaN/Inf voxels", "replace NaN")
    assert run_cli(bad) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("error: x.nii.gz: voxels must be finite; got 3 NaN/Inf voxels; fix: replace NaN")


def test_run_cli_lets_bugs_raise():
    def bug():
        raise ZeroDivisionError
    with pytest.raises(ZeroDivisionError):
        run_cli(bug)


def test_user_error_message_parts():
    e = UserError("cfg.yaml", "unknown key 'a'", None, "did you mean 'b'?")
    assert str(e) == "cfg.yaml: unknown key 'a'; fix: did you mean 'b'?"


# ---------------------------------------------------------------------------------- CLI


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A self-describing segmenter folder with an untrained 2-level U-Net expecting T2W + ADC."""
    from segment.config import ModelConfig
    from segment.torch_segmenter import Segmenter
    from segment.networks import build_network

    mcfg = ModelConfig(channels=[4, 8], strides=[2], num_res_units=0)
    spec = PreprocessSpec(channels=["T2W", "ADC"], crop_mm=[32.0, 32.0])
    net = build_network(mcfg, 2)
    folder = tmp_path_factory.mktemp("model") / "tiny"
    return Segmenter(net, mcfg, spec, [32, 32]).save(folder)


def _cli(argv, capsys):
    from segment.cli import main

    code = main(argv)
    return code, capsys.readouterr().err


def _assert_one_line_error(code, err, *words):
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err
    for w in words:
        assert w in err


@pytest.fixture
def small_case(tmp_path, px0000_crop):
    """T2W (32 x 32 voxels around the gland centre) and ADC files of ProstateX-0000."""
    t2 = read_nifti(px0000_crop / "t2.nii.gz")
    c = crop(t2, (48, 48, 8), (80, 80, 11))
    case = tmp_path / "in" / "ProstateX-0000"
    save(c.array[0], c.affine, case / "t2.nii.gz")
    (case / "adc.nii.gz").write_bytes((px0000_crop / "adc.nii.gz").read_bytes())
    return case


def test_cli_predict_valid_input_succeeds(tiny_model, small_case, tmp_path, capsys):
    """Positive control for the CLI cases below: the same call with good input writes outputs."""
    out = tmp_path / "out"
    code, err = _cli(["predict", "--model", str(tiny_model), str(small_case / "t2.nii.gz"),
                      str(small_case / "adc.nii.gz"), "-o", str(out)], capsys)
    assert code == 0, err
    pred = nib.load(str(out / "zones.nii.gz"))  # one case: the case folder layout (mricore.results)
    np.testing.assert_array_equal(pred.affine, nib.load(str(small_case / "t2.nii.gz")).affine)


def _corrupt(small_case, how):
    t2 = small_case / "t2.nii.gz"
    img = nib.load(str(t2))
    data = np.asarray(img.dataobj, np.float32)
    if how == "missing file":
        t2.unlink()
    elif how == "non-NIfTI file":
        t2.write_text("plain text")
    elif how == "4D where 3D expected":
        save(np.stack([data, data], -1), img.affine, t2)
    elif how == "NaN voxels":
        data[1, 2, 1] = np.nan
        save(data, img.affine, t2)
    elif how == "unknown channel name":
        (small_case / "adc.nii.gz").unlink()   # the model needs ADC; the case has only T2W
        return [str(small_case)]
    return [str(t2), str(small_case / "adc.nii.gz")]


CLI_PREDICT_CASES = [
    ("missing file", "does not exist"),
    ("non-NIfTI file", "not a readable NIfTI"),
    ("4D where 3D expected", "expected a 3D volume"),
    ("NaN voxels", "NaN/Inf"),
    ("unknown channel name", "provide ADC"),
]


@pytest.mark.parametrize("how,words", CLI_PREDICT_CASES)
def test_cli_predict_bad_input(tiny_model, small_case, tmp_path, capsys, how, words):
    inputs = _corrupt(small_case, how)
    out = tmp_path / "out"
    code, err = _cli(["predict", "--model", str(tiny_model), *inputs, "-o", str(out)], capsys)
    _assert_one_line_error(code, err, words)
    assert not out.exists() or not any(out.iterdir())   # nothing written


def test_cli_train_config_with_wrong_type(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cfg.yaml").write_text("name: t\noutput_dir: runs\ntrain:\n  epochs: ten\n")
    code, err = _cli(["train", "--config", "cfg.yaml"], capsys)
    _assert_one_line_error(code, err, "cfg.yaml", "train.epochs", "must be an integer", "'ten'")
    assert not (tmp_path / "runs").exists()


def test_cli_train_override_with_wrong_type(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cfg.yaml").write_text("name: t\noutput_dir: runs\n")
    code, err = _cli(["train", "--config", "cfg.yaml", "--set", "train.lr=fast"], capsys)
    _assert_one_line_error(code, err, "--set", "train.lr", "must be a number")
    assert not (tmp_path / "runs").exists()


def test_cli_train_missing_dataset(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cfg.yaml").write_text("name: t\noutput_dir: runs\ndata:\n  root: no/such/folder\n")
    code, err = _cli(["train", "--config", "cfg.yaml"], capsys)
    _assert_one_line_error(code, err, "no/such/folder", "does not exist")
    assert not (tmp_path / "runs").exists()


def test_run_cli_works_outside_the_main_thread(capsys):
    # A server worker thread may call a command: no SIGTERM handler is installed there, errors still one line.
    import threading

    codes = []

    def bad():
        raise InputError("x", "rule", 1, "fix")
    t = threading.Thread(target=lambda: codes.append(run_cli(bad)))
    t.start()
    t.join()
    assert codes == [2] and capsys.readouterr().err.startswith("error: x: rule")


@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_swallowed_inside_a_finaliser_still_stops_the_run(tmp_path, sig, code, monkeypatch):
    """Python runs a signal handler between bytecodes; inside a __del__ its exception is printed as
    "ignored" and lost. The run must still stop with the signal's code, keep nothing and print no
    traceback (the exception reaches sys.unraisablehook, which would print it)."""
    # SIGINT's default action, as at a terminal: a test run started in the background (`cmd &`) inherits
    # an ignored SIGINT, and run_cli then rightly leaves it ignored.
    old_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    unraisable = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)

    class Finaliser:
        def __del__(self):
            os.kill(os.getpid(), sig)
            for _ in range(100_000):  # the handler runs here, inside __del__
                pass

    def main():
        with staged_dir(tmp_path / "case") as stage:
            (stage / "a.txt").write_text("x")
            Finaliser()  # collected at once: the signal arrives while outputs are written
            (stage / "b.txt").write_text("y")
        return 0

    try:
        assert run_cli(main) == code
    finally:
        signal.signal(signal.SIGINT, old_int)
    assert not (tmp_path / "case").exists() and not list(tmp_path.glob(".case*"))
    assert unraisable == []  # the swallowed signal printed nothing
    assert run_cli(lambda: 0) == 0  # the next run starts clean
