"""mricore.classifiers: every registry name builds in 2D and 3D; covariates reach the head; bad names fail."""

import pytest
import torch

from mricore.classifiers import DEFAULT_CAM_LAYER, REGISTRY, build_classifier, check_name, load_matching
from mricore.errors import ConfigError, UserError


# (name, spatial_dims, width): CPU-sized widths; EfficientNet-B0 has a fixed width by definition.
BUILD_CASES = [(n, d, 1.0 if n == "efficientnet-b0" else 0.125) for n in sorted(REGISTRY) for d in (2, 3)]


@pytest.mark.parametrize("name,dims,width", BUILD_CASES)
def test_each_name_builds_and_returns_logits(name, dims, width):
    torch.manual_seed(0)
    net = build_classifier(name, spatial_dims=dims, in_channels=2, n_outputs=1, width=width).eval()
    x = torch.randn(2, 2, *([32] * dims))
    with torch.no_grad():
        y = net(x)
    assert y.shape == (2, 1)
    assert torch.isfinite(y).all()
    # The default Grad-CAM layer exists in every backbone.
    assert DEFAULT_CAM_LAYER[name] in dict(net.named_modules())


def test_covariates_change_the_output():
    torch.manual_seed(0)
    net = build_classifier("resnet18", 2, 1, n_covariates=3, width=0.125).eval()
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        a = net(x, torch.zeros(2, 3))
        b = net(x, torch.tensor([[70.0, 8.5, 45.0], [0.0, 0.0, 0.0]]))
    assert not torch.allclose(a[0], b[0])   # covariates changed -> output changed
    assert torch.allclose(a[1], b[1])       # same covariates -> same output (eval mode, per-sample)


def test_without_covariates_the_head_sees_image_features_only():
    torch.manual_seed(0)
    net = build_classifier("densenet121", 2, 1, width=0.125).eval()
    assert net.head.in_features == net.encoder(torch.zeros(1, 1, 32, 32)).shape[1]


def test_missing_covariates_is_a_user_error():
    net = build_classifier("resnet18", 2, 1, n_covariates=2, width=0.125).eval()
    with pytest.raises(UserError, match="covariates"):
        net(torch.zeros(1, 1, 32, 32))


# Invalid arguments, one test each.
def test_unknown_name_lists_valid_names():
    with pytest.raises(ConfigError, match="resnet18") as e:
        check_name("resnet19")
    assert "densenet121" in str(e.value) and "efficientnet-b0" in str(e.value)


def test_bad_spatial_dims():
    with pytest.raises(ConfigError, match="spatial_dims"):
        build_classifier("resnet18", spatial_dims=4)


def test_bad_width():
    with pytest.raises(ConfigError, match="width"):
        build_classifier("resnet18", width=0)


def test_efficientnet_width_is_fixed():
    with pytest.raises(ConfigError, match="fixed width"):
        build_classifier("efficientnet-b0", width=0.5)


def test_load_matching_counts_tensors():
    torch.manual_seed(0)
    a = build_classifier("resnet18", 2, 1, width=0.125)
    b = build_classifier("resnet18", 2, 1, n_covariates=2, width=0.125)  # head shape differs
    loaded, total = load_matching(b, a.state_dict())
    assert loaded == total - 1  # every tensor but head.weight (bias shape matches)
    assert torch.equal(b.encoder.conv1.weight, a.encoder.conv1.weight)
