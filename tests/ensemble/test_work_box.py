"""The ensemble combines on the work box (ensemble.engine, ensemble.passes) and gives the maps of the
plain rule: every member restored onto the whole input grid on its own, then combined there.

Two members with different working grids (t2_a 120 mm, t2_b 100 mm: two passes, two footprints) on a
study padded to a wide field of view, so the box is a small part of the grid; the reference below is
written out member by member, without the engine."""

import numpy as np
import pytest

from ensemble import combine, engine
from ensemble.config import EnsembleConfig
from ensemble.members import read_members
from mricore import zones
from mricore.io import read_nifti
from mricore.preprocess import preprocess, restore
from mricore.volume import Volume
from segment.segmenter import BACKGROUND

CASE = "prostatex/ProstateX-0000"
PAD = 120  # voxels (60 mm) on each side in-plane: a 624 x 624 grid, the members see 120 mm of it


@pytest.fixture(scope="module")
def wide(data_dir):
    vol = read_nifti(data_dir / CASE / "t2.nii.gz", "T2W")
    aff = vol.affine.copy()
    aff[:3, 3] -= aff[:3, :2] @ [PAD, PAD]
    return Volume(np.pad(vol.array, [(0, 0), (PAD, PAD), (PAD, PAD), (0, 0)]), aff, vol.channels, vol.case_id)


def whole_grid(image, used, method):
    """The plain rule: (label, probabilities, entropy, disagreement, member labels) on the whole grid."""
    probs, labels = [], []
    for m in used:
        prep = preprocess(image, m.spec)
        p = m.segmenter.probabilities(prep.array, tta_flip=False, whole_slice=None)
        probs.append(restore(p, prep, fill=list(BACKGROUND)))
        labels.append(restore(zones.labels_from_probabilities(p)[None], prep)[0])
    prob, labels = np.mean(probs, axis=0), np.stack(labels)
    label = combine.majority_vote(labels, prob) if method == "vote" else zones.labels_from_probabilities(prob)
    prob = combine.vote_fractions(labels) if method == "vote" else prob
    label = zones.keep_largest_component(label)
    return label, prob, combine.entropy(prob), combine.disagreement(labels, label), labels


@pytest.mark.parametrize("method", ["mean", "vote"])
def test_the_work_box_gives_the_whole_grid_maps(members, wide, method):
    used = read_members([members["t2_a"], members["t2_b"]])
    cfg = EnsembleConfig(members=[str(m.path) for m in used], method=method, whole_slice=None)
    res = engine.run_ensemble(wide, used, cfg)
    label, prob, ent, dis, labels = whole_grid(wide, used, method)
    box_voxels = np.prod([s.stop - s.start for s in res.box])
    assert box_voxels < 0.25 * wide.array[0].size       # the case tests something: most voxels lie outside
    assert res.info["preprocessing_passes"] == 2
    np.testing.assert_array_equal(res.member_labels, labels)
    np.testing.assert_array_equal(res.label, label)
    np.testing.assert_allclose(res.prob, prob, rtol=0, atol=1e-5)
    np.testing.assert_allclose(res.entropy, ent, rtol=0, atol=1e-5)
    np.testing.assert_array_equal(res.disagreement, dis)
    assert res.label.shape == res.prob.shape[1:] == res.entropy.shape == wide.shape
