"""2D and 2.5D members run only on the working slices that reach the locator's box (ensemble.passes
.needed_slices, member_probabilities), and the box gets the values of running every slice.

PROMISE12 Case00 (64 slices of 1.6 mm) with the bundled locator and a 2.5D member (one neighbouring
slice each side as channels): the margin box spans about half the slices, so most of the saving and the
context slices at its ends are exercised."""

import numpy as np
import pytest

from ensemble import engine
from ensemble.config import load_ensemble_config
from ensemble.members import read_members
from ensemble.passes import member_probabilities, needed_slices
from mricore.io import read_nifti
from mricore.preprocess import preprocess, restore
from segment.segmenter import BACKGROUND

CASE = "promise12/Case00/t2.nii.gz"


@pytest.fixture(scope="module")
def case(data_dir):
    cfg = load_ensemble_config()
    image = read_nifti(data_dir / CASE, "T2W")
    member = next(m for m in read_members(cfg.members) if m.segmenter.model_cfg.context > 0)
    centre, keep, _ = engine.locate(image, cfg)
    return image, member, centre, keep


def test_only_the_slices_that_reach_the_box_run_and_the_box_is_unchanged(case):
    image, member, centre, keep = case
    prep = preprocess(image, member.spec, centre)
    zs = needed_slices(prep, keep)
    k = prep.array.shape[3]
    assert 0 < zs.stop - zs.start < 0.75 * k            # the case tests something: a quarter or more is skipped
    full = member.segmenter.probabilities(prep.array, tta_flip=False, whole_slice=True)
    part = member_probabilities(member.segmenter, prep.array, zs, False, True)
    np.testing.assert_array_equal(part[..., zs], full[..., zs])    # the context slices were given
    outside = np.ones(k, bool)
    outside[zs] = False
    assert np.all(part[0][..., outside] == 1) and np.all(part[1:][..., outside] == 0)
    on_box = [restore(p, prep, fill=list(BACKGROUND), box=keep) for p in (full, part)]
    np.testing.assert_array_equal(on_box[1], on_box[0])


def test_without_a_box_every_slice_runs(case):
    image, member, centre, _ = case
    prep = preprocess(image, member.spec, centre)
    assert needed_slices(prep, None) == slice(0, prep.array.shape[3])
