"""Theoretical receptive fields: published figures, hand-computed tiny cases, and a numerical cross-check.

The cross-check is independent of the arithmetic in erf.rf: it copies a network,
makes every path from an input pixel to a unit carry a strictly positive weight,
backpropagates from one unit and compares the input-gradient support with the
analytic box.
"""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from erf.graph import truncate
from erf.rf import AxisRF, LayerRF, conv_axis, receptive_field, receptive_fields, sampled_axis, union_axis


def meta_model(name: str, **kwargs) -> nn.Module:
    """A torchvision model on the meta device: shapes only, built and traced in milliseconds."""
    with torch.device("meta"):
        return torchvision.models.get_model(name, **kwargs)


# --------------------------------------------------------------------------- published figures


class FCNHead(nn.Module):
    """FCN-VGG16: vgg16 features, fc6 as a 7x7 conv, fc7 as a 1x1 conv (Long et al. 2015)."""

    def __init__(self):
        super().__init__()
        self.features = torchvision.models.vgg16().features
        self.fc6 = nn.Conv2d(512, 4096, 7)
        self.relu6 = nn.ReLU()
        self.fc7 = nn.Conv2d(4096, 4096, 1)
        self.relu7 = nn.ReLU()

    def forward(self, x):
        return self.relu7(self.fc7(self.relu6(self.fc6(self.features(x)))))


@pytest.mark.parametrize("model, layer, rf, jump", [
    ("vgg16", "features.28", 196, 16),  # conv5_3
    ("vgg16", "features.29", 196, 16),  # its ReLU
    ("vgg16", "features.30", 212, 32),  # pool5
    ("alexnet", "features.12", 195, 32),  # pool5
    ("resnet50", "layer3", 267, 16),
    ("resnet50", "layer4", 427, 32),
])
def test_published_figures(model, layer, rf, jump):
    r = receptive_field(meta_model(model), layer, 224)
    assert r.rf == (rf, rf) and r.jump == (jump, jump) and not r.is_global and r.exact


def test_fcn_vgg16_fc7_is_404():
    with torch.device("meta"):
        fcn = FCNHead()
    r = receptive_field(fcn, "fc7", 224)
    assert r.rf == (404, 404) and r.jump == (32, 32) and r.size == (1, 1)


def test_dilated_resnet50_keeps_rf_and_jump_8():
    rfs = receptive_fields(meta_model("resnet50", replace_stride_with_dilation=[False, True, True]), 224,
                           ["layer2", "layer3", "layer4"])
    assert [r.jump for r in rfs.values()] == [(8, 8)] * 3
    assert rfs["layer4"].rf == (427, 427) and rfs["layer4"].size == (28, 28)


def test_every_layer_of_torchvision_models_in_forward_order():
    rfs = receptive_fields(meta_model("resnet18"), 224)
    names = list(rfs)
    assert names[:4] == ["conv1", "bn1", "relu", "maxpool"]
    # a container comes right after its last op, innermost first
    i = names.index("layer1.1.relu_1")
    assert names[i + 1:i + 3] == ["layer1.1", "layer1"]
    assert "layer1.0.add" in names
    assert rfs["avgpool"].is_global and rfs["flatten"].is_global and rfs["fc"].size == (1, 1)
    vgg = receptive_fields(meta_model("vgg16"), 224)
    assert "flatten" not in vgg  # a flattened 7x7 map has no grid; the Linear after it is global
    assert not vgg["avgpool"].is_global and vgg["classifier.0"].is_global
    rfs = receptive_fields(meta_model("mobilenet_v2"), 224)
    assert rfs["features.0"] == LayerRF("features.0", (112, 112), (3, 3), (2, 2), (0, 0), False, (224, 224))
    assert rfs["features.18"].jump == (32, 32) and rfs["classifier"].is_global


# --------------------------------------------------------------------------- per-axis arithmetic by hand


def test_conv_axis_by_hand():
    a = conv_axis(AxisRF(1, 1, 0), kernel=3, stride=2, padding=1)  # unit i centred on 2i, pixels 2i-1..2i+1
    assert a == (3, 2, 0)
    assert conv_axis(a, 3, 1, 1) == (7, 2, 0)
    assert conv_axis(a, 2, 2, 0) == (5, 4, 1)  # 2x2 pool: units 0 and 1 -> centre between 0 and 2
    assert conv_axis(AxisRF(1, 1, 0), 3, 1, 0, dilation=2) == (5, 1, 2)  # taps at 0, 2, 4


def test_union_axis():
    assert union_axis(AxisRF(3, 2, 0), AxisRF(1, 2, 0)) == (3, 2, 0)
    assert union_axis(AxisRF(3, 2, 0), AxisRF(3, 2, 0.5)) is None
    assert union_axis(AxisRF(3, 2, 0), AxisRF(3, 4, 0)) is None


def test_sampled_axis_by_hand():
    # bilinear x2 (align_corners=False): u = o/2 - 1/4 reads floor(u), floor(u)+1, clamped at 0
    a, exact = sampled_axis(AxisRF(1, 1, 0), [[0], [0, 1], [0, 1], [1, 2], [1, 2], [2]], 0.5, extent=3)
    assert a == (2.5, 0.5, -0.25) and exact
    # nearest x2: o reads o // 2
    a, exact = sampled_axis(AxisRF(1, 1, 0), [[0], [0], [1], [1]], 0.5, extent=2)
    assert a == (1.5, 0.5, -0.25) and exact
    # 3 -> 2 adaptive bins [0, 2) and [1, 3): a 2-wide window with stride 1
    a, exact = sampled_axis(AxisRF(1, 1, 0), [[0, 1], [1, 2]], 1.0, extent=3)
    assert a == (2, 1, 0.5) and exact
    # 2 -> 3 adaptive bins {0}, {0, 1}, {1}: centres -1/6, 1/2, 7/6 with half-width 1/2
    a, exact = sampled_axis(AxisRF(1, 1, 0), [[0], [0, 1], [1]], 2 / 3, extent=2)
    assert a == pytest.approx((2, 2 / 3, -1 / 6)) and exact
    # 2 -> 7 bins on a stride-2 map (rf 3): unit 0 reads pixels -1..1 but its box spans -2..2
    bins = [[0], [0], [0], [0, 1], [1], [1], [1]]
    a, exact = sampled_axis(AxisRF(3, 2, 0), bins, 1 / 6, extent=4)
    assert a == pytest.approx((5, 1 / 3, 0)) and not exact
    with pytest.raises(ValueError, match="no output unit"):
        sampled_axis(AxisRF(1, 1, 0), [[], []], 1.0, extent=2)


def test_box_and_center_by_hand():
    r = LayerRF("pool", (3, 3), (2, 2), (2, 2), (0.5, 0.5), False, (5, 5))
    assert r.center(2, 1) == (4.5, 2.5)
    assert r.box(2, 1) == (4, 2, 6, 4)
    assert r.box(2, 1, clip=True) == (4, 2, 5, 4)
    g = LayerRF("fc", (1, 1), (5, 7), (0, 0), (2, 3), True, (5, 7))
    assert g.box(0, 0) == g.box(0, 0, clip=True) == (0, 0, 5, 7)
    with pytest.raises(ValueError, match=r"unit \(3, 0\) is outside layer 'pool'"):
        r.box(3, 0)


# --------------------------------------------------------------------------- tiny models by hand


def test_adaptive_pool_by_hand():
    r = receptive_field(nn.Sequential(nn.AdaptiveAvgPool2d(2)), "0", 3)  # bins [0, 2), [1, 3)
    assert (r.rf, r.jump, r.start, r.exact) == ((2, 2), (1, 1), (0.5, 0.5), True)
    r = receptive_field(nn.Sequential(nn.AdaptiveAvgPool2d((2, 3))), "0", (4, 6))  # 2x2 bins
    assert (r.rf, r.jump, r.start, r.exact) == ((2, 2), (2, 2), (0.5, 0.5), True)


def test_ceil_mode_pool_by_hand():
    r = receptive_field(nn.Sequential(nn.MaxPool2d(2, 2, ceil_mode=True)), "0", 5)
    assert r.size == (3, 3) and (r.rf, r.jump, r.start) == ((2, 2), (2, 2), (0.5, 0.5))
    assert r.box(2, 2) == (4, 4, 6, 6) and r.box(2, 2, clip=True) == (4, 4, 5, 5)


def test_dilation_and_asymmetric_kernels_by_hand():
    net = nn.Sequential(
        nn.Conv2d(3, 4, kernel_size=(1, 5), stride=(1, 2), padding=(0, 2)),  # W: rf 5, jump 2
        nn.Conv2d(4, 4, kernel_size=(3, 1), padding=(2, 0), dilation=(2, 1)),  # H: rf 1 + 2*2 = 5
        nn.Conv2d(4, 4, kernel_size=3, stride=(2, 1)),  # H: 5 + 2 = 7, jump 2; W: 5 + 2*2 = 9
    )
    r = receptive_fields(net, (12, 16))
    assert (r["0"].rf, r["0"].jump, r["0"].start) == ((1, 5), (1, 2), (0, 0))
    assert (r["1"].rf, r["1"].jump, r["1"].start) == ((5, 5), (1, 2), (0, 0))
    assert (r["2"].rf, r["2"].jump, r["2"].start) == ((7, 9), (2, 2), (1, 2))
    assert r["2"].size == (5, 6)


def test_transposed_conv_by_hand():
    # k=4, s=2, p=1 on the image: output o reads inputs {0}, {0,1}, {0,1}, {1,2}, ...
    r = receptive_field(nn.Sequential(nn.ConvTranspose2d(3, 3, 4, stride=2, padding=1)), "0", 4)
    assert r.size == (8, 8) and (r.rf, r.jump, r.start) == ((2.5, 2.5), (0.5, 0.5), (-0.25, -0.25)) and r.exact
    assert r.box(0, 1) == (-1, 0, 1, 2) and r.box(0, 1, clip=True) == (0, 0, 1, 2)
    assert r.box(2, 3) == (0, 1, 2, 3)


@pytest.mark.parametrize("mode, rf", [("nearest", 1.5), ("bilinear", 2.5), ("bicubic", 4.5)])
def test_upsampling_by_hand(mode, rf):
    net = nn.Sequential(nn.Upsample(scale_factor=2, mode=mode))
    r = receptive_field(net, "0", 6)
    assert r.size == (12, 12) and r.rf == (rf, rf) and r.jump == (0.5, 0.5) and r.start == (-0.25, -0.25)
    fun = receptive_field(FunctionalUpsample(mode), "interpolate", 6)
    assert (fun.rf, fun.jump, fun.start) == (r.rf, r.jump, r.start)


class FunctionalUpsample(nn.Module):
    def __init__(self, mode):
        super().__init__()
        self.mode = mode

    def forward(self, x):
        return F.interpolate(x, scale_factor=2, mode=self.mode)


class Branches(nn.Module):
    """x -> 3x3 conv and 1x1 conv, added and concatenated (same grid: union = the 3x3 branch)."""

    def __init__(self, skip_stride: int = 1, skip_kernel: int = 1):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1, stride=skip_stride)
        self.b = nn.Conv2d(3, 4, skip_kernel, stride=skip_stride)

    def forward(self, x):
        a, b = self.a(x), self.b(x)
        return torch.cat([a + b, b], dim=1)


def test_branches_union():
    r = receptive_fields(Branches(), 8)
    assert r["add"].rf == (3, 3) and r["cat"].rf == (3, 3) and r["b"].rf == (1, 1)


def test_branches_on_different_grids_are_reported():
    # 3x3/p1 is centred on 2i, 2x2/p0 on 2i + 0.5: same size, different centres
    with pytest.raises(ValueError, match=r"branches meeting at 'add'.*different grids"):
        receptive_fields(Branches(skip_stride=2, skip_kernel=2), 8)


class GlobalTile(nn.Module):
    """ParseNet-style context: global average, tiled back with expand / repeat / interpolate."""

    def __init__(self, how: str):
        super().__init__()
        self.how = how
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        f = self.conv(x)
        g = f.mean((2, 3), keepdim=True)  # (B, C, 1, 1)
        if self.how == "expand":
            g = g.expand(-1, -1, f.shape[2], f.shape[3])
        elif self.how == "expand_as":
            g = g.expand_as(f)
        elif self.how == "repeat":
            g = g.repeat(1, 1, f.shape[2], f.shape[3])
        else:
            g = F.interpolate(g, size=f.shape[-2:], mode="bilinear", align_corners=False)
        return torch.cat([f, g], 1)


@pytest.mark.parametrize("how", ["expand", "expand_as", "repeat", "interpolate"])
def test_global_context_tiled_back_stays_global(how):
    r = receptive_fields(GlobalTile(how), (10, 12))
    assert r["conv"].rf == (3, 3) and not r["conv"].is_global
    assert r["mean"].is_global and r["mean"].size == (1, 1) and r["mean"].rf == (10, 12)
    assert r["cat"].is_global and r["cat"].size == (10, 12)
    assert r["cat"].box(9, 11, clip=True) == (0, 0, 10, 12)


def test_parsenet_context_is_global():
    from parsenet.config import ParseNetConfig
    from parsenet.model import build_model

    rfs = receptive_fields(build_model(ParseNetConfig(num_classes=3, width=1 / 8)), 64)
    assert not rfs["fc7"].is_global and rfs["pool6"].is_global and rfs["unpool6"].is_global
    assert rfs["upscore"].is_global and rfs["upscore"].size == (64, 64)


# --------------------------------------------------------------------------- bad input


class Op(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fn = fn

    def forward(self, x):
        return self.fn(self.conv(x))


@pytest.mark.parametrize("module, match, layers", [
    (nn.Sequential(nn.Conv2d(3, 4, 3), nn.GroupNorm(2, 4)), r"GroupNorm at '1'", None),
    (nn.Sequential(nn.Conv2d(3, 4, 3), nn.Linear(6, 5)), r"Linear at '1'.*mixes positions", None),
    (nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, padding_mode="circular")), r"Conv2d at '0'.*circular", None),
    # layout ops are followed now (issue 15); a layer left in a layout that is no map is refused by name
    (Op(lambda f: f.transpose(2, 3)), r"Tensor.transpose at 'transpose'", ["transpose"]),
    (Op(lambda f: f.softmax(dim=2)), r"Tensor.softmax at 'softmax'.*dim 2", None),
    (Op(lambda f: torch.roll(f, 1, 2)), r"roll at 'roll'", ["roll"]),
])
def test_unsupported_ops_name_op_and_path(module, match, layers):
    with pytest.raises(ValueError, match=match):
        receptive_fields(module, 8, layers)


def test_input_too_small_names_the_layer():
    with pytest.raises(ValueError, match=r"too small.*'features.30' \(MaxPool2d\)"):
        receptive_fields(meta_model("vgg16"), 16)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.MaxPool2d(2), nn.Conv2d(4, 4, 3))
    with pytest.raises(ValueError, match=r"too small.*layer '2' \(Conv2d\)"):
        receptive_fields(net, 5)


def test_unknown_layer_lists_close_matches():
    with pytest.raises(ValueError, match=r"unknown layer in ResNet 'layer5'.*did you mean: layer.*"):
        receptive_field(meta_model("resnet18"), "layer5", 224)


def test_layer_that_is_not_a_map_is_refused():
    with pytest.raises(ValueError, match="'flatten' flattens a map"):
        receptive_field(meta_model("vgg16"), "flatten", 224)


def test_unused_module_is_refused():
    net = Op(torch.relu)
    net.unused = nn.Conv2d(4, 4, 1)
    with pytest.raises(ValueError, match="'unused' .* never called"):
        receptive_field(net, "unused", 8)


@pytest.mark.parametrize("size", [0, -3, (224,), (224, 0), "224", 22.5, True])
def test_bad_input_size(size):
    with pytest.raises(ValueError, match="input_size must be a positive int or"):
        receptive_fields(nn.Sequential(nn.Conv2d(3, 4, 3)), size)


def test_untraceable_model():
    class Branchy(nn.Module):
        def forward(self, x):
            return x if x.sum() > 0 else -x

    with pytest.raises(ValueError, match="Branchy cannot be traced by torch.fx"):
        receptive_fields(Branchy(), 8)


# --------------------------------------------------------------------------- invariances


def test_same_answer_on_meta_and_cpu_and_training_mode_restored():
    cpu = torchvision.models.resnet18().train()
    a = receptive_fields(cpu, 64)
    assert cpu.training
    assert a == receptive_fields(meta_model("resnet18"), 64)


def test_asking_for_some_layers_gives_the_same_as_all():
    model = meta_model("resnet18")
    every = receptive_fields(model, (96, 128))
    some = receptive_fields(model, (96, 128), ["layer2", "layer1.0.add", "conv1"])
    assert list(some) == ["layer2", "layer1.0.add", "conv1"]
    assert all(some[k] == every[k] for k in some)


def test_rf_does_not_depend_on_input_size_but_size_does():
    small, large = (receptive_field(meta_model("vgg16"), "features.30", s) for s in (64, (224, 320)))
    assert small.rf == large.rf and small.jump == large.jump and small.start == large.start
    assert small.size == (2, 2) and large.size == (7, 10)


# --------------------------------------------------------------------------- numerical cross-check


class _SumFeatures(nn.Module):
    def forward(self, x):
        return x.sum(1, keepdim=True)  # (B, 1): a Linear layer with one output and weights 1


def linearised(model: nn.Module, collapse: bool = False) -> nn.Module:
    """A float64 copy in which every input pixel reaches a unit through positive weights only.

    Conv / Linear weights become 1/fan_in (positive; averaging keeps float64 far from
    under- and overflow), biases 0; activations and BatchNorm become identity so no path
    is cut (a ReLU has zero gradient where its input is negative); max-pools become average
    pools of the same geometry, because a max-pool passes gradient only to its argmax while
    an average pool reaches every element of the window. With all weights positive nothing
    cancels, so the nonzero support of the input gradient of a unit is exactly the set of
    pixels it depends on.

    ``collapse=True`` also gives every conv one input and one output channel (same kernel,
    stride, padding, dilation) and every Linear one output: with positive weights the pixels
    a unit depends on do not depend on the channel count, and the check then runs at full
    resolution in milliseconds, where boxes are not clipped by the image border. The model
    may be on the meta device then: every module with parameters is replaced.
    """
    model = copy.deepcopy(model)
    pointwise = (nn.ReLU, nn.ReLU6, nn.Hardswish, nn.SiLU, nn.GELU, nn.modules.batchnorm._BatchNorm,
                 nn.LayerNorm)  # LayerNorm over channels only: identical upstream gradients would cancel
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, pointwise):
                setattr(parent, name, nn.Identity())
            elif isinstance(child, nn.MaxPool2d):
                assert child.dilation in (1, (1, 1))  # torchvision models do not dilate pools
                setattr(parent, name, nn.AvgPool2d(child.kernel_size, child.stride, child.padding, child.ceil_mode))
            elif isinstance(child, nn.AdaptiveMaxPool2d):
                setattr(parent, name, nn.AdaptiveAvgPool2d(child.output_size))
            elif collapse and isinstance(child, nn.Conv2d):
                setattr(parent, name, nn.Conv2d(1, 1, child.kernel_size, child.stride, child.padding,
                                                child.dilation, padding_mode=child.padding_mode))
            elif collapse and isinstance(child, nn.Linear):
                setattr(parent, name, _SumFeatures())
    model = model.double().eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear, nn.ConvTranspose2d)):
                fan_in = 1 if isinstance(m, nn.ConvTranspose2d) else m.weight[0].numel()
                m.weight.fill_(1.0 / fan_in)
                if m.bias is not None:
                    m.bias.zero_()
    return model


def gradient_boxes(model: nn.Module, layer: str, size: tuple[int, int], units: list[tuple[int, int]],
                   collapse: bool = False, all_channels: bool = False, floor: float = 0.0):
    """Bounding box (top, left, bottom, right) and fill of each unit's input-gradient support.

    The gradient starts at channel 0 of the unit, or at every channel (``all_channels``: the TRF
    is the union over channels, which differ where an identity branch keeps some, as in ShuffleNet).
    The support is where the gradient exceeds ``floor`` times its largest value: an additive attention
    mask of -100 (Swin) leaves weights of e**-100 ~ 4e-44, which float64 still holds."""
    body = truncate(linearised(model, collapse), layer)
    x = torch.zeros(len(units), 1 if collapse else 3, *size, dtype=torch.float64, requires_grad=True)
    out = body(x)  # (U, C, h, w): one image per unit
    seed = torch.zeros_like(out)  # d(unit i of image i) / d(out)
    for i, (y, x_) in enumerate(units):
        seed[i, slice(None) if all_channels else 0, y, x_] = 1.0
    out.backward(seed)
    boxes = []
    for g in x.grad.abs().sum(1):  # (H, W) per unit
        g = torch.where(g > floor * g.max(), g, 0.0)
        rows, cols = g.any(1).nonzero().flatten(), g.any(0).nonzero().flatten()
        t, l, b, r = rows.min().item(), cols.min().item(), rows.max().item() + 1, cols.max().item() + 1
        boxes.append(((t, l, b, r), bool((g[t:b, l:r] > 0).all())))
    return boxes


def corner_and_centre_units(h: int, w: int) -> list[tuple[int, int]]:
    return sorted({(0, 0), (h // 2, w // 2), (h - 1, w - 1), (0, w - 1), (h // 3, w - 1)})


@pytest.mark.slow
@pytest.mark.parametrize("name, kwargs, size, layers", [
    ("alexnet", {}, (256, 240), ["features.5", "features.12"]),
    ("vgg16", {}, (224, 224), ["features.16", "features.29", "features.30"]),
    ("resnet18", {}, (448, 480), ["layer2", "layer4"]),
    ("resnet50", {}, (448, 448), ["layer3", "layer4"]),
    ("resnet50", {"replace_stride_with_dilation": [False, True, True]}, (448, 448), ["layer4"]),
    ("mobilenet_v2", {}, (512, 512), ["features.6", "features.18"]),
])
def test_gradient_support_equals_trf_box(name, kwargs, size, layers):
    model = meta_model(name, **kwargs)
    for layer in layers:
        r = receptive_field(model, layer, size)
        assert r.exact and not r.is_global
        units = corner_and_centre_units(*r.size)
        assert any(r.box(*u) == r.box(*u, clip=True) for u in units)  # one box inside the image: rf tested
        for unit, (box, filled) in zip(units, gradient_boxes(model, layer, size, units, collapse=True)):
            assert box == r.box(*unit, clip=True), (name, layer, unit)
            assert filled, (name, layer, unit)


def test_gradient_support_of_global_layers_is_the_image():
    model = meta_model("resnet18")
    assert receptive_field(model, "fc", 48).is_global
    [(box, filled)] = gradient_boxes(model, "fc", (48, 40), [(0, 0)], collapse=True)
    assert box == (0, 0, 48, 40) and filled


@pytest.mark.slow
@pytest.mark.parametrize("net, size", [
    (nn.Sequential(nn.ConvTranspose2d(3, 3, 4, stride=2, padding=1), nn.Conv2d(3, 3, 3, padding=1)), 7),
    (nn.Sequential(nn.Conv2d(3, 3, 3, padding=1), nn.Upsample(scale_factor=2, mode="bilinear")), 7),
    (nn.Sequential(nn.Conv2d(3, 3, 3, padding=1), nn.Upsample(scale_factor=2, mode="nearest")), 7),
    (nn.Sequential(nn.Conv2d(3, 3, 4, stride=4), nn.Upsample(scale_factor=4, mode="bilinear")), 16),
    (nn.Sequential(nn.Conv2d(3, 3, 3, padding=1), nn.AdaptiveAvgPool2d(5)), 7),  # uneven bins: envelope
])
def test_gradient_support_after_resampling(net, size):
    """Upsampling and uneven pooling: the box is exact where LayerRF.exact says so, and always contains the support."""
    layer = str(len(net) - 1)
    r = receptive_field(net, layer, size)
    units = [(y, x) for y in range(r.size[0]) for x in range(r.size[1])]
    for unit, (box, _) in zip(units, gradient_boxes(net, layer, (size, size), units)):
        fit = r.box(*unit, clip=True)
        if r.exact:
            assert box == fit, unit
        else:
            assert fit[0] <= box[0] and fit[1] <= box[1] and box[2] <= fit[2] and box[3] <= fit[3], unit


@pytest.mark.slow
@pytest.mark.parametrize("context", ["global", "none"])
def test_gradient_support_of_parsenet(context):
    from parsenet.config import ParseNetConfig
    from parsenet.model import build_model

    model = build_model(ParseNetConfig(num_classes=3, width=1 / 8, context=context, backbone="vgg16-fcn32s"))
    r = receptive_field(model, "upscore", 64)
    assert r.is_global == (context == "global")
    units = [(0, 0), (31, 40), (63, 63)]
    for unit, (box, _) in zip(units, gradient_boxes(model, "upscore", (64, 64), units)):
        fit = r.box(*unit, clip=True)
        if r.exact:
            assert box == fit, unit
        else:
            assert fit[0] <= box[0] and fit[1] <= box[1] and box[2] <= fit[2] and box[3] <= fit[3], unit


# --------------------------------------------------------------------------- layouts (issue 15)


@pytest.mark.slow
@pytest.mark.parametrize("name, size, layers", [
    ("convnext_tiny", (96, 96), ["features.1", "features.3"]),  # channels-last LayerNorm / Linear blocks
    ("shufflenet_v2_x0_5", (96, 96), ["stage2", "stage3"]),  # channel split, cat and shuffle
    ("regnet_x_400mf", (96, 96), ["trunk_output.block2"]),  # built on the CPU: its init fails on meta
])
def test_gradient_support_through_layout_ops(name, size, layers):
    model = torchvision.models.get_model(name)
    for layer in layers:
        r = receptive_field(model, layer, size)
        assert r.exact and not r.is_global and r.layout == "NCHW"
        units = corner_and_centre_units(*r.size)
        for unit, (box, filled) in zip(units, gradient_boxes(model, layer, size, units, all_channels=True)):
            assert box == r.box(*unit, clip=True), (name, layer, unit)


@pytest.mark.slow
@pytest.mark.parametrize("name, layer, layout, global_from", [
    ("vit_b_16", "encoder.layers.encoder_layer_0.ln", "tokens+1", ""),  # fx names module ln_1 "ln"
    ("vit_b_16", "encoder", "tokens+1", "MultiheadAttention at 'encoder.layers.encoder_layer_0.self_attention'"),
    ("swin_t", "features.1", "NHWC", ""),
    ("swin_t", "avgpool", "NCHW", "shifted_window_attention at 'features.7.0.attn.shifted_window_attention'"),
    ("maxvit_t", "blocks.0", "NCHW", None),
    ("regnet_y_400mf", "trunk_output.block1", "NCHW", None),
])
def test_every_family_is_analysed_at_its_default_size(name, layer, layout, global_from):
    """A few of the families bench/rf_all_models.py runs in full: exact or global, never a traceback."""
    from erf.models import load_model

    lm = load_model(name, device="meta")
    rfs = receptive_fields(lm.model, lm.input_size)
    r = rfs[layer]
    assert r.layout == layout and (global_from is None or r.global_from == global_from)
    assert all(x.is_global or x.rf[0] >= 1 for x in rfs.values())


def test_layout_ops_by_hand():
    """(B, C, H, W) -> tokens -> (B, H, W, C) -> back: the positions are followed, the TRF is the conv's."""

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, stride=2, padding=1)
            self.norm = nn.LayerNorm(4)
            self.conv2 = nn.Conv2d(4, 4, 3, padding=1)

        def forward(self, x):
            x = self.conv(x)  # (B, 4, 8, 8)
            B, C, H, W = x.shape
            t = self.norm(x.flatten(2).transpose(1, 2))  # (B, 64, 4) tokens, LayerNorm over channels
            m = t.reshape(B, H, W, C)  # (B, 8, 8, 4) channels last
            g = m.permute(0, 3, 1, 2).reshape(B, 2, 2, H, W).transpose(1, 2).reshape(B, C, H, W)  # shuffle
            return self.conv2(g)

    rfs = receptive_fields(Net(), 16, ["norm", "reshape", "conv2"])
    assert rfs["norm"].layout == "tokens+0" and rfs["norm"].size == (8, 8) and rfs["norm"].rf == (3, 3)
    assert rfs["reshape"].layout == "NHWC" and rfs["reshape"].jump == (2, 2)
    assert rfs["conv2"].layout == "NCHW" and rfs["conv2"].rf == (7, 7) and rfs["conv2"].exact
    with pytest.raises(ValueError, match=r"mixes positions"):
        receptive_fields(nn.Sequential(nn.Conv2d(3, 4, 3), nn.Linear(6, 5)), 8)


def _window_mask(masked: bool) -> torch.Tensor:
    """(16, 16) additive mask for the tokens of a 4x4 grid: 0 within the same 2x2 window, -100 (Swin's) across;
    all zeros when not ``masked``."""
    win = (torch.arange(4)[:, None] // 2 * 2 + torch.arange(4)[None, :] // 2).flatten()  # (16,) window id
    return torch.where(win[:, None] == win[None, :], 0.0, -100.0) if masked else torch.zeros(16, 16)


@pytest.mark.parametrize("explicit", [False, True])
def test_attention_over_windows_and_under_a_mask_by_hand(explicit):
    """Tokens of a 4x4 grid (4-px patches) attend within 2x2 windows (a block mask): the TRF is the window,
    whether attention is one SDPA call or written out as timm's Swin does (q @ k^T + mask, softmax, @ v)."""

    class Net(nn.Module):
        def __init__(self, masked: bool):
            super().__init__()
            self.embed = nn.Conv2d(3, 8, 4, stride=4)
            self.register_buffer("mask", _window_mask(masked))

        def forward(self, x):
            t = self.embed(x).flatten(2).transpose(1, 2)  # (B, 16, 8)
            if not explicit:
                return F.scaled_dot_product_attention(t, t, t, attn_mask=self.mask)
            scores = (t * 8 ** -0.5) @ t.transpose(-2, -1) + self.mask  # (B, 16, 16): query x key
            return scores.softmax(dim=-1) @ t  # (B, 16, 8)

    layer = "matmul_1" if explicit else "scaled_dot_product_attention"
    masked = receptive_field(Net(True), layer, 16)
    assert masked.layout == "tokens+0" and not masked.is_global and masked.exact is False
    # a unit reads its window, one patch to one side: the one symmetric box that contains every unit's
    # window spans one patch either side, 3 patches = 12 px (not an affine grid of boxes, so exact=False)
    assert masked.rf == (12, 12) and masked.box(0, 0, clip=True) == (0, 0, 8, 8)
    for y, x in ((1, 1), (2, 2), (1, 2)):
        t, l, b, r = masked.box(y, x, clip=True)
        wy, wx = y // 2 * 8, x // 2 * 8  # the window's top-left pixel
        assert t <= wy and l <= wx and b >= wy + 8 and r >= wx + 8
    full = receptive_field(Net(False), layer, 16)
    assert full.is_global and full.global_from.startswith("matmul" if explicit else "scaled_dot_product_attention")
    if explicit:  # the scores are pairs of units, not units
        with pytest.raises(ValueError, match=r"holds attention scores between pairs of units"):
            receptive_field(Net(True), "softmax", 16)


@pytest.mark.parametrize("masked", [True, False])
def test_attention_scores_used_otherwise_keep_the_window(masked):
    """Scores read by something other than ``@ v`` (here the largest weight per query scales the token): each
    element counts every unit its scores read, so under the window mask the TRF is still the window."""

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Conv2d(3, 8, 4, stride=4)
            self.register_buffer("mask", _window_mask(masked))

        def forward(self, x):
            t = self.embed(x).flatten(2).transpose(1, 2)  # (B, 16, 8)
            attn = (t @ t.transpose(-2, -1) + self.mask).softmax(dim=-1)  # (B, 16, 16)
            return attn.amax(dim=-1, keepdim=True) * t  # (B, 16, 8)

    r = receptive_field(Net(), "mul", 16)
    if masked:
        assert not r.is_global and r.rf == (12, 12) and r.box(0, 0, clip=True) == (0, 0, 8, 8)
    else:
        assert r.is_global and r.global_from == "Tensor.amax at 'amax'"  # the op that used the scores
