"""timm models: loading by name, layout-following TRFs, tokens and channels-last layers on their grid.

Random init only (seeded); nothing is downloaded. Small inputs where the model allows.
"""
from __future__ import annotations

import pytest
import torch

from erf.graph import truncate
from erf.models import load_model
from erf.rf import receptive_field, receptive_fields
from tests.test_rf import corner_and_centre_units, gradient_boxes

timm = pytest.importorskip("timm", reason="timm is not installed: pip install 'erf-toolkit[timm]'")


def small(name: str, **kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False, **kwargs).eval()


def test_timm_name_random_init_is_seeded_and_in_eval_mode():
    a, b = load_model("timm:convnext_atto"), load_model("timm:convnext_atto")
    assert a.name == "timm:convnext_atto" and a.input_size == (224, 224) and not a.model.training
    assert a.meta["source"] == "timm" and a.meta["weights"] is None
    assert torch.equal(a.model.stem[0].weight, b.model.stem[0].weight)


def test_timm_local_weights_and_bad_names(tmp_path):
    model = small("convnext_atto")
    torch.save(model.state_dict(), tmp_path / "w.pt")
    lm = load_model("timm:convnext_atto", weights=str(tmp_path / "w.pt"))
    assert torch.equal(lm.model.stem[0].weight, model.stem[0].weight)
    with pytest.raises(ValueError, match=r"unknown timm model 'convnext_attto' \(did you mean: convnext_atto"):
        load_model("timm:convnext_attto")
    with pytest.raises(FileNotFoundError, match="weights file 'nope.pt' does not exist"):
        load_model("timm:convnext_atto", weights="nope.pt")


@pytest.mark.parametrize("name, layer, prefix", [
    ("vit_tiny_patch16_224", "blocks.0.norm1", 1),
    ("deit_tiny_distilled_patch16_224", "blocks.0.norm1", 2),  # class and distillation tokens
])
def test_one_occluded_patch_changes_only_its_token(name, layer, prefix):
    """Tokens before the first attention map to (D, h, w): occluding patch (1, 2) changes only unit (1, 2)."""
    model = small(name, img_size=64)  # 4x4 patches of 16 px
    r = receptive_field(model, layer, 64)
    assert r.layout == f"tokens+{prefix}" and r.size == (4, 4) and r.rf == (16, 16) and not r.is_global
    body = truncate(model, layer)
    x = torch.rand(1, 3, 64, 64)
    y = x.clone()
    y[..., 16:32, 32:48] = torch.rand(3, 16, 16)  # the patch of row 1, column 2
    with torch.no_grad():
        a, b = body(x), body(y)  # (1, 192, 4, 4)
    assert a.shape == (1, 192, 4, 4)
    changed = (a - b).abs().amax(1)[0] > 0  # (4, 4)
    assert changed[1, 2] and changed.sum() == 1


def test_vit_is_global_from_the_first_attention():
    model = small("vit_tiny_patch16_224", img_size=64)
    rfs = receptive_fields(model, 64, ["patch_embed", "blocks.0.norm1", "blocks.0", "blocks.5"])
    assert not rfs["patch_embed"].is_global and rfs["patch_embed"].rf == (16, 16)
    assert rfs["blocks.0"].is_global and rfs["blocks.5"].is_global and rfs["blocks.5"].size == (4, 4)
    assert rfs["blocks.5"].global_from == "scaled_dot_product_attention at 'blocks.0.attn.scaled_dot_product_attention'"
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        out = truncate(model, "blocks.5")(x)
        y = x.clone()
        y[:, :, :16, :16] = 0  # patch (0, 0) only
        changed = (out - truncate(model, "blocks.5")(y)).abs().amax(1)  # (2, 4, 4)
    assert out.shape == (2, 192, 4, 4) and bool((changed > 0).all())  # every token sees every patch


@pytest.mark.slow
def test_swin_channels_last_stages_map_to_their_grid():
    model = small("swin_tiny_patch4_window7_224")
    rfs = receptive_fields(model, 224, ["patch_embed", "layers.0.blocks.0.norm1", "layers.1", "layers.3", "head"])
    assert rfs["layers.0.blocks.0.norm1"].layout == "NHWC" and rfs["layers.0.blocks.0.norm1"].rf == (4, 4)
    assert rfs["layers.1"].size == (28, 28) and rfs["layers.3"].size == (7, 7) and not rfs["layers.1"].is_global
    assert rfs["head"].is_global
    x = torch.rand(1, 3, 224, 224)
    y = x.clone()
    y[..., 8:12, 20:24] = 0  # patch (2, 5) of the 4-px patch embedding
    body = truncate(model, "layers.0.blocks.0.norm1")
    with torch.no_grad():
        a, b = body(x), body(y)
    assert a.shape == (1, 96, 56, 56)
    changed = (a - b).abs().amax(1)[0] > 0
    assert changed[2, 5] and changed.sum() == 1
    for layer in ("layers.1", "layers.3"):
        with torch.no_grad():
            assert truncate(model, layer)(x).shape[-2:] == rfs[layer].size


def test_swin_windows_and_shift_mask_hold_the_gradient_support():
    """timm's Swin writes attention out (q @ k^T + bias + shift mask, softmax, @ v): each token reads its
    window, and after the shifted block its masked window, not the tokens the roll brought beside it.
    A 128 px input, 4-token windows: stages of 32, 16, 8 and 4 tokens, the last one window (global)."""
    model = small("swin_tiny_patch4_window7_224", img_size=128, window_size=4, embed_dim=12, depths=(2, 2, 2, 2),
                  num_heads=(1, 1, 1, 1))
    layers = ["layers.0.blocks.0", "layers.0", "layers.1", "layers.2"]
    rfs = receptive_fields(model, 128, layers + ["layers.3"])
    assert rfs["layers.0.blocks.0"].rf == (28, 28)  # windows of 4 patches: 3 patches either side of the centre
    # shifted block (shift 2): patch 2 reads patches 2..5, i.e. the windows 0..3 and 4..7 of block 0, pixels
    # 0..31 around its centre 9.5: 21.5 px either side, rf 44. Patch 0 reads patches 0, 1 only: the shift
    # mask keeps out 28, 29 that the roll put in its window; without the mask its box would be the image.
    assert rfs["layers.0"].rf == (44, 44) and rfs["layers.0"].box(0, 0, clip=True) == (0, 0, 24, 24)
    assert rfs["layers.3"].is_global and rfs["layers.3"].global_from == "matmul at 'layers.3.blocks.0.attn.matmul_1'"
    for layer in layers:
        r = rfs[layer]
        assert not r.is_global and r.exact is False and r.layout == "NHWC"  # windows: no affine grid of boxes
        units = corner_and_centre_units(*r.size)
        for unit, (box, _) in zip(units, gradient_boxes(model, layer, (128, 128), units, floor=1e-30)):
            t, l, b, rt = r.box(*unit, clip=True)
            assert t <= box[0] and l <= box[1] and box[2] <= b and box[3] <= rt, (layer, unit, box)
            if layer == "layers.0.blocks.0":  # one window, no shift: the box is the window's
                wy, wx = unit[0] // 4 * 16, unit[1] // 4 * 16
                assert box == (wy, wx, wy + 16, wx + 16)


@pytest.mark.slow
@pytest.mark.parametrize("name, size, layers", [
    ("convnext_atto", (96, 96), ["stages.1", "stages.2"]),
    ("resnet18", (96, 112), ["layer2", "layer3"]),
])
def test_timm_cnn_trf_equals_gradient_support(name, size, layers):
    """ConvNeXt's channels-last LayerNorm / Linear blocks are followed: the TRF box is the gradient support."""
    model = small(name)
    for layer in layers:
        r = receptive_field(model, layer, size)
        assert r.exact and not r.is_global and r.layout == "NCHW"
        units = corner_and_centre_units(*r.size)
        for unit, (box, filled) in zip(units, gradient_boxes(model, layer, size, units)):
            assert box == r.box(*unit, clip=True), (name, layer, unit)
