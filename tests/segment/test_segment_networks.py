"""Registry networks build in 2D and 3D and return logits; probabilities are zone-consistent."""

import numpy as np
import pytest
import torch

from mricore.errors import ConfigError
from segment.config import ModelConfig, n_outputs
from mricore.zones import labels_from_probabilities
from segment.networks import REGISTRY, build_network, class_probabilities, encoder_parameters

# (name, spatial_dims, label scheme, input size): tiny widths, sizes divisible by the total stride
CASES = [(n, d, s) for n in sorted(REGISTRY) for d in (2, 3) for s in ("multiclass", "regions")]


@pytest.mark.parametrize("name,dims,scheme", CASES)
def test_every_registry_name_builds_and_returns_logits(name, dims, scheme):
    cfg = ModelConfig(name=name, spatial_dims=dims, channels=[4, 8, 16], strides=[2, 2], label_scheme=scheme)
    net = build_network(cfg, n_sequences=2).eval()
    size = (16, 16) if dims == 2 else (16, 16, 8)
    with torch.no_grad():
        out = net(torch.randn(2, 2, *size))
    assert out.shape == (2, n_outputs(scheme), *size)
    # logits, not probabilities: unbounded and not summing to one
    assert not torch.allclose(out.sum(1), torch.ones_like(out.sum(1)))
    assert encoder_parameters(net, name)


def test_25d_multiplies_input_channels():
    net = build_network(ModelConfig(channels=[4, 8], strides=[2], context=1), n_sequences=2)
    with torch.no_grad():
        assert net.eval()(torch.randn(1, 6, 16, 16)).shape == (1, 3, 16, 16)


def test_dynunet_with_two_levels_is_a_config_error():
    with pytest.raises(ConfigError, match="at least 3 levels"):
        build_network(ModelConfig(name="dynunet", channels=[4, 8], strides=[2]), 1)


def test_unknown_name_lists_valid_ones():
    with pytest.raises(ConfigError) as e:
        build_network(ModelConfig(name="vnet"), 1)
    for n in REGISTRY:
        assert n in str(e.value)


@pytest.mark.parametrize("scheme", ["multiclass", "regions"])
def test_class_probabilities_are_zone_consistent(scheme):
    logits = torch.randn(3, n_outputs(scheme), 8, 8) * 4
    p = class_probabilities(logits, scheme)
    assert p.shape == (3, 3, 8, 8) and p.dtype == torch.float32
    assert torch.all(p >= 0)
    torch.testing.assert_close(p.sum(1), torch.ones(3, 8, 8))  # background + TZ + PZ = 1
    wg = 1 - p[:, 0]
    torch.testing.assert_close(wg, p[:, 1] + p[:, 2])           # p(WG) = p(TZ) + p(PZ)
    if scheme == "regions":
        torch.testing.assert_close(wg, torch.sigmoid(logits[:, 0]))
        assert torch.all(p[:, 1] <= wg + 1e-6)                  # TZ inside WG
    lab = labels_from_probabilities(p[0].numpy())
    assert lab.dtype == np.uint8 and set(np.unique(lab)) <= {0, 1, 2}
