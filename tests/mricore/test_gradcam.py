"""mricore.gradcam: layer validation, Grad-CAM on a tiny trained classifier, region CAM on a segmenter,
faithfulness check and the PNG overlay."""

import numpy as np
import pytest
import torch

from mricore.classifiers import build_classifier
from mricore.errors import ConfigError, OutputExistsError
from mricore.gradcam import check_layer, class_cam, faithfulness, region_cam, save_overlay

SIZE, SQ = 32, 8  # image side and bright-square side (voxels)


def _square_batch(n: int, rng: np.random.Generator):
    """Noise images; label 1 when a bright square is present (random place), else 0."""
    x = rng.normal(0, 1, (n, 1, SIZE, SIZE)).astype(np.float32)
    y = (np.arange(n) % 2).astype(np.float32)
    where = np.zeros((n, SIZE, SIZE), bool)
    for i in np.flatnonzero(y):
        a, b = rng.integers(4, SIZE - SQ - 4, 2)
        x[i, 0, a:a + SQ, b:b + SQ] += 3.0
        where[i, a:a + SQ, b:b + SQ] = True
    return torch.from_numpy(x), torch.from_numpy(y), where



@pytest.fixture(scope="module")
def trained():
    """A tiny ResNet18 trained for a few steps until it separates square from no square."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    net = build_classifier("resnet18", 2, 1, width=0.125)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(30):
        x, y, _ = _square_batch(16, rng)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(net(x)[:, 0], y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    x, y, where = _square_batch(16, np.random.default_rng(1))
    with torch.no_grad():
        p = torch.sigmoid(net(x)[:, 0])
    assert float(p[y == 1].min()) > float(p[y == 0].max()), "tiny classifier did not learn the square"
    return net


def test_cam_highlights_the_square(trained):
    x, y, where = _square_batch(8, np.random.default_rng(2))
    cam = class_cam(trained, x, "encoder.layer2")
    assert cam.shape == (8, SIZE, SIZE) and cam.min() >= 0 and cam.max() <= 1
    for i in np.flatnonzero(y.numpy()):
        inside, outside = cam[i][where[i]].mean(), cam[i][~where[i]].mean()
        assert inside > 1.5 * outside  # the CAM sits on the square


def test_masking_top_cam_drops_score_more_than_random(trained):
    x, y, _ = _square_batch(8, np.random.default_rng(3))

    @torch.no_grad()
    def score(t):
        return float(trained(t)[0, 0])

    top, rand = [], []
    for i in np.flatnonzero(y.numpy()):
        xi = x[i:i + 1]
        f = faithfulness(score, xi, class_cam(trained, xi, "encoder.layer2"), top_k=5, n_random=5)
        assert f["n_masked"] == round(SIZE * SIZE * 0.05)
        top.append(f["drop_top_k"])
        rand.append(f["drop_random_mean"])
    assert np.mean(top) > 1.5 * np.mean(rand)  # masking the CAM's top 5 % hurts more than random 5 %


def test_region_cam_on_a_tiny_segmenter():
    from monai.networks.nets import UNet

    torch.manual_seed(0)
    net = UNet(2, 1, 3, channels=(4, 8), strides=(2,), num_res_units=0).eval()
    x = torch.randn(3, 1, 32, 32)
    with torch.no_grad():
        mask = net(x).argmax(1) == 1
    cam = region_cam(net, x, "model.0", channel=1, mask=mask)
    assert cam.shape == (3, 32, 32) and np.isfinite(cam).all()
    assert cam.max() == pytest.approx(1.0) and cam.min() >= 0


def test_unknown_layer_lists_valid_names(trained):
    with pytest.raises(ConfigError, match="encoder.layer4") as e:
        check_layer(trained, "encoder.layer9")
    assert "valid layers" in str(e.value) and "\n" not in str(e.value)


def test_overlay_png_written_atomically_and_not_overwritten(tmp_path):
    img = np.random.default_rng(0).normal(size=(16, 16, 4)).astype(np.float32)
    cam = np.zeros_like(img)
    cam[4:8, 4:8, 2] = 1
    p = save_overlay(img, cam, tmp_path / "o.png", title="t", contour=cam > 0)
    assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(OutputExistsError):
        save_overlay(img, cam, tmp_path / "o.png")
    assert [f.name for f in tmp_path.iterdir()] == ["o.png"]
