"""Custom configurations build and run; wrong inputs get errors naming the expected shape."""

from __future__ import annotations

import pytest
import torch

from unetrpp.network import InputShapeError, NetworkConfig, NetworkConfigError, build_network, variant_config

TINY = NetworkConfig(in_channels=1, out_channels=3, patch_size=(32, 64, 64), stem_kernel=(2, 4, 4),
                     feature_size=8, depths=(1, 1, 1, 1), proj_sizes=(16, 16, 16, 8), decoder_proj_size=16,
                     decoder_depth=1)


@pytest.mark.parametrize("attention,conv_blocks,tied", [("paired", 1, True), ("paired", 2, False), ("shared_ef", 1, True)])
def test_tiny_configs_forward_and_backward(attention, conv_blocks, tied):
    cfg = TINY.replace(attention=attention, conv_blocks=conv_blocks, tied_ef=tied)
    net = build_network(cfg, deep_supervision=True)
    out = net(torch.randn(2, 1, 32, 64, 64))
    assert [tuple(o.shape) for o in out] == [(2, 3, 32, 64, 64), (2, 3, 16, 16, 16), (2, 3, 8, 8, 8)]
    sum(o.mean() for o in out).backward()
    assert net.out1.conv.conv.weight.grad is not None
    net.eval()
    assert tuple(build_network(cfg)(torch.randn(1, 1, 32, 64, 64)).shape) == (1, 3, 32, 64, 64)


def test_wrong_channel_count_names_expected_shape():
    net = build_network(TINY).eval()
    with pytest.raises(InputShapeError, match=r"\(batch, 1, 32, 64, 64\)"):
        net(torch.zeros(1, 2, 32, 64, 64))


def test_wrong_spatial_size_is_refused_with_hint():
    net = build_network(variant_config("synapse")).eval()
    with pytest.raises(InputShapeError, match=r"64, 128, 128.*sliding-window"):
        net(torch.zeros(1, 1, 64, 128, 96))


def test_bad_config_names_the_field():
    with pytest.raises(NetworkConfigError, match="patch_size"):
        TINY.replace(patch_size=(20, 64, 64))
    with pytest.raises(NetworkConfigError, match="conv_blocks"):
        TINY.replace(conv_blocks=3)
    with pytest.raises(NetworkConfigError, match="unknown UNETR"):
        variant_config("prostate")


def test_config_round_trips_through_dict():
    for name in ("synapse", "acdc", "brats", "lung"):
        cfg = variant_config(name)
        assert NetworkConfig.from_dict(cfg.to_dict()) == cfg
    assert variant_config("tumor") == variant_config("brats")


def test_deep_supervision_heads_only_in_training_build():
    assert not hasattr(build_network("synapse"), "out2")
    assert hasattr(build_network("synapse", deep_supervision=True), "out3")
