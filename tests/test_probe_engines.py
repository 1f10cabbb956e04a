"""The probe's engine choice: incremental by default where the graph allows, the same numbers either way."""
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from erf.occlusion import probe_occlusion
from erf.rf import receptive_field
from parsenet.config import ParseNetConfig
from parsenet.model import build_model


def _net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.5),
                         nn.MaxPool2d(2), nn.Conv2d(4, 6, 3, padding=2, dilation=2), nn.ReLU())


def test_auto_picks_incremental_and_matches_full():
    torch.manual_seed(0)
    model = _net().eval()
    images = torch.randn(3, 3, 24, 24)
    kw = dict(patch=5, stride=2, top_k=2, seed=3, batch_size=16)
    auto = probe_occlusion(model, "6", images, engine="auto", **kw)
    full = probe_occlusion(model, "6", images, engine="full", **kw)
    assert auto.config["engine_used"] == "incremental" and full.config["engine_used"] == "full"
    np.testing.assert_allclose(auto.maps, full.maps, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(auto.topk_images, full.topk_images)


def test_model_left_in_training_mode_is_probed_in_eval_mode():
    """Dropout and BatchNorm batch statistics would make the discrepancy random; the probe must not see them."""
    torch.manual_seed(0)
    model = _net()
    model[1].running_mean.uniform_(-1, 1)  # make train-mode and eval-mode BatchNorm differ
    images = torch.randn(2, 3, 20, 20)
    kw = dict(patch=5, stride=3, neuron=(1, "center"), engine="full")
    in_train_mode = probe_occlusion(model.train(), "6", images, **kw)
    in_eval_mode = probe_occlusion(model.eval(), "6", images, **kw)
    np.testing.assert_allclose(in_train_mode.image_maps, in_eval_mode.image_maps, rtol=1e-5, atol=1e-6)


def test_untraceable_model_falls_back_to_full_with_a_warning():
    class Branchy(nn.Module):  # data-dependent control flow: torch.fx cannot trace it
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 2, 3)

        def forward(self, x):
            return self.conv(x) if x.sum() > -1e9 else -self.conv(x)

    images = torch.randn(2, 3, 12, 12)
    rf = receptive_field(nn.Sequential(nn.Conv2d(3, 2, 3)), "0", 12)  # its TRF, given since it cannot be traced
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = probe_occlusion(Branchy().eval(), "conv", images, patch=3, stride=3, top_k=1, rf=rf)
    assert res.config["engine_used"] == "full"
    assert any("full re-inference" in str(w.message) for w in caught)


@pytest.mark.parametrize("context", ["none", "global"])
def test_parsenet_probe_same_with_both_engines(context):
    torch.manual_seed(0)
    model = build_model(ParseNetConfig(num_classes=3, width=1 / 8, batch_norm=True, context=context)).eval()
    images = torch.randn(2, 3, 40, 40)
    kw = dict(patch=7, stride=6, top_k=1, units=[0, 1, 2], seed=1)
    inc = probe_occlusion(model, "score", images, engine="incremental", **kw)
    full = probe_occlusion(model, "score", images, engine="full", **kw)
    scale = max(float(np.abs(full.maps).max()), 1e-6)
    np.testing.assert_allclose(inc.maps / scale, full.maps / scale, atol=1e-4)
