"""N4 bias-field correction (mricore.bias): removes a smooth multiplicative shading, keeps the grid,
copes with thin slabs, and leaves a single slice alone; in the ensemble it touches T2W only."""

import numpy as np

from mricore.bias import bias_corrected, n4_correct
from mricore.volume import Volume


def _phantom(shape=(128, 128, 12), seed=0):
    """Piecewise-constant 'tissue' (8 mm blocks of random intensity) inside a body ellipse, dark outside."""
    rng = np.random.default_rng(seed)
    blocks = rng.uniform(100, 300, (shape[0] // 16 + 1, shape[1] // 16 + 1, shape[2] // 3 + 1))
    tissue = np.kron(blocks, np.ones((16, 16, 3)))[: shape[0], : shape[1], : shape[2]]
    i, j = np.meshgrid(np.linspace(-1, 1, shape[0]), np.linspace(-1, 1, shape[1]), indexing="ij")
    body = (i**2 / 0.9 + j**2 / 0.8) < 1
    return (tissue * body[..., None]).astype(np.float32), body


def test_n4_removes_a_smooth_shading():
    truth, body = _phantom()
    i = np.linspace(-1, 1, truth.shape[0])[:, None, None]
    j = np.linspace(-1, 1, truth.shape[1])[None, :, None]
    log_bias = 0.6 * i + 0.4 * j * j  # about a factor 2.7 across the field: a surface coil's shading
    shaded = truth * np.exp(log_bias).astype(np.float32)
    corrected = n4_correct(shaded, (0.5, 0.5, 3.0))
    assert corrected.shape == shaded.shape and corrected.dtype == np.float32
    inside = np.broadcast_to(body[..., None], truth.shape) & (truth > 0)
    before = np.log(shaded[inside] / truth[inside]).std()
    after = np.log(corrected[inside] / truth[inside]).std()
    assert after < 0.6 * before, (before, after)


def test_thin_slab_and_single_slice():
    truth, _ = _phantom((96, 96, 3), seed=1)
    slab = n4_correct(truth, (0.7, 0.7, 1.25))  # I2CVB-like: 3 slices, 1.25 mm
    assert slab.shape == truth.shape and np.isfinite(slab).all()
    one = truth[..., :1]
    np.testing.assert_array_equal(n4_correct(one, (0.7, 0.7, 3.0)), one)


def test_only_t2w_is_corrected():
    truth, _ = _phantom((64, 64, 6), seed=2)
    shaded = truth * np.exp(np.linspace(-0.5, 0.5, 64))[:, None, None].astype(np.float32)
    vol = Volume(np.stack([shaded, shaded]), np.diag([0.5, 0.5, 3.0, 1.0]), ("T2W", "ADC"), "x")
    out = bias_corrected(vol, "T2W")
    np.testing.assert_array_equal(out.array[1], vol.array[1])  # ADC is quantitative: left as it is
    assert not np.allclose(out.array[0], vol.array[0])
    np.testing.assert_array_equal(vol.array[0], shaded)  # the input is not modified in place
