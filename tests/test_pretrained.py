import math
import os

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torchvision.models import VGG16_BN_Weights, VGG16_Weights

from parsenet.config import ParseNetConfig
from parsenet.model import build_model
from parsenet.pretrained import (
    convert_vgg16_state_dict,
    decimate_fc6,
    decimate_fc7,
    fc6_to_conv,
    load_vgg16_backbone,
    vgg16_expected_shapes,
    vgg16_key_map,
)

CONVS = ["conv1_1", "conv1_2", "conv2_1", "conv2_2", "conv3_1", "conv3_2", "conv3_3",
         "conv4_1", "conv4_2", "conv4_3", "conv5_1", "conv5_2", "conv5_3"]


def full_model(**kw):
    """A width-1 model with uninitialised storage: no time spent on random init of 134M weights."""
    with torch.device("meta"):
        model = build_model(ParseNetConfig(**kw))
    return model.to_empty(device="cpu")


@pytest.fixture(scope="module")
def vgg_sd():
    """A torchvision-layout VGG16 state dict with random values (138M floats, made once)."""
    shapes = dict(vgg16_expected_shapes(False), **{"classifier.6.weight": (1000, 4096), "classifier.6.bias": (1000,)})
    sizes = [math.prod(s) for s in shapes.values()]
    flat = torch.empty(sum(sizes)).uniform_(-1, 1, generator=torch.Generator().manual_seed(0))
    return {k: t.view(s) for (k, s), t in zip(shapes.items(), flat.split(sizes))}  # views of one storage


def layout(batch_norm=False, value=0.0):
    """A state dict with the right keys and shapes that takes no memory (expanded scalars)."""
    return {k: torch.tensor(value).expand(s) for k, s in vgg16_expected_shapes(batch_norm).items()}


@pytest.fixture(scope="module")
def vgg_file(vgg_sd, tmp_path_factory):
    path = tmp_path_factory.mktemp("vgg") / "vgg16.pth"
    torch.save(vgg_sd, path)
    return path


# --- the layout matches torchvision's VGG16 -------------------------------


@pytest.mark.parametrize("batch_norm, builder", [(False, torchvision.models.vgg16), (True, torchvision.models.vgg16_bn)])
def test_expected_layout_is_torchvisions(batch_norm, builder):
    with torch.device("meta"):
        tv = builder()
    shapes = {k: tuple(v.shape) for k, v in tv.state_dict().items()
              if not k.startswith("classifier.6.") and not k.endswith("num_batches_tracked")}
    assert vgg16_expected_shapes(batch_norm) == shapes


def test_key_map_hand_checked():
    plain, bn = vgg16_key_map(False), vgg16_key_map(True)
    assert (plain["features.0"], plain["features.2"], plain["features.5"], plain["features.28"]) == (
        "conv1_1.0", "conv1_2.0", "conv2_1.0", "conv5_3.0")
    assert (bn["features.3"], bn["features.4"], bn["features.7"], bn["features.40"]) == (
        "conv1_2.0", "conv1_2.1", "conv2_1.0", "conv5_3.0")
    assert plain["classifier.0"] == bn["classifier.0"] == "fc6.0"
    assert plain["classifier.3"] == "fc7.0"


# --- conversions are exact, on small shapes ---------------------------------


def test_fc6_to_conv_equals_linear_on_the_window():
    linear = torch.nn.Linear(4 * 7 * 7, 6).double()
    w, b = fc6_to_conv(linear.weight, linear.bias, in_shape=(4, 7, 7))
    assert w.shape == (6, 4, 7, 7)
    assert w[5, 2, 3, 1] == linear.weight[5, 2 * 49 + 3 * 7 + 1]  # (C, H, W) flattening order
    x = torch.randn(3, 4, 7, 7, dtype=torch.float64)
    assert torch.allclose(F.conv2d(x, w, b).flatten(1), linear(x.flatten(1)))


def test_decimate_fc6_equals_linear_on_every_third_tap():
    linear = torch.nn.Linear(2 * 7 * 7, 8).double()
    w, b = decimate_fc6(*fc6_to_conv(linear.weight, linear.bias, in_shape=(2, 7, 7)))
    assert w.shape == (2, 2, 3, 3) and b.shape == (2,)
    x = torch.randn(3, 2, 7, 7, dtype=torch.float64)
    taps = torch.zeros(7, 7, dtype=torch.float64)
    taps[::3, ::3] = 1  # rows and columns 0, 3, 6
    expected = linear((x * taps).flatten(1))[:, ::4]  # units 0 and 4
    assert torch.allclose(F.conv2d(x, w, b, dilation=3).flatten(1), expected)


def test_decimate_fc7_equals_linear_on_every_fourth_unit():
    linear = torch.nn.Linear(8, 8).double()
    w, b = decimate_fc7(linear.weight, linear.bias)
    assert w.shape == (2, 2, 1, 1)
    x = torch.randn(5, 2, dtype=torch.float64)
    full = torch.zeros(5, 8, dtype=torch.float64)
    full[:, ::4] = x
    assert torch.allclose(F.conv2d(x[:, :, None, None], w, b).flatten(1), linear(full)[:, ::4])


# --- full-size loading ------------------------------------------------------


def _assert_convs_loaded(model, sd, batch_norm=False):
    key_map = vgg16_key_map(batch_norm)
    for src, dst in key_map.items():
        if src.startswith("features."):
            module = model.get_submodule(dst)
            assert torch.equal(module.weight, sd[f"{src}.weight"]), dst
            assert torch.equal(module.bias, sd[f"{src}.bias"]), dst


def test_load_local_file_into_fcn32s(vgg_sd, vgg_file):
    model = load_vgg16_backbone(full_model(backbone="vgg16-fcn32s"), vgg_file)
    _assert_convs_loaded(model, vgg_sd)
    # fc6 on one 7x7 pool5 window is the ImageNet Linear layer on the flattened window.
    x = torch.randn(2, 512, 7, 7)
    fc6 = model.fc6[0]
    assert fc6.weight.shape == (4096, 512, 7, 7)
    conv = F.conv2d(x, fc6.weight, fc6.bias).flatten(1)  # (2, 4096)
    linear = F.linear(x.flatten(1), vgg_sd["classifier.0.weight"], vgg_sd["classifier.0.bias"])
    assert torch.allclose(conv, linear, rtol=1e-4, atol=1e-3)
    # ... and with the model's padding 3, the centre cell of a 7x7 map sees exactly that window.
    centre = F.conv2d(x, fc6.weight[:8], fc6.bias[:8], padding=fc6.padding)[:, :, 3, 3]
    assert torch.allclose(centre, linear[:, :8], rtol=1e-4, atol=1e-3)
    assert torch.equal(model.fc7[0].weight[:, :, 0, 0], vgg_sd["classifier.3.weight"])


def test_load_through_torchvision_weights_api_into_largefov(vgg_sd, vgg_file, tmp_path, monkeypatch):
    # What a download would leave behind: $TORCH_HOME/hub/checkpoints/<file name of the URL>.
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    os.link(vgg_file, cache / os.path.basename(VGG16_Weights.IMAGENET1K_V1.url))
    model = load_vgg16_backbone(full_model(backbone="vgg16-largefov"), "IMAGENET1K_V1", progress=False)
    _assert_convs_loaded(model, vgg_sd)
    fc6, fc7 = model.fc6[0], model.fc7[0]
    assert fc6.weight.shape == (1024, 512, 3, 3) and fc7.weight.shape == (1024, 1024, 1, 1)
    W6 = vgg_sd["classifier.0.weight"].view(4096, 512, 7, 7)
    assert torch.equal(fc6.weight[1, 7], W6[4, 7, ::3, ::3])  # unit 1 is unit 4; taps 0, 3, 6
    assert torch.equal(fc7.weight[2, 3, 0, 0], vgg_sd["classifier.3.weight"][8, 12])
    # fc6 with dilation 3 on a 7x7 window: the Linear layer on taps 0, 3, 6, every 4th unit.
    x = torch.randn(1, 512, 7, 7)
    taps = torch.zeros(7, 7)
    taps[::3, ::3] = 1
    linear = F.linear((x * taps).flatten(1), vgg_sd["classifier.0.weight"], vgg_sd["classifier.0.bias"])[:, ::4]
    assert torch.allclose(F.conv2d(x, fc6.weight, fc6.bias, dilation=3).flatten(1), linear, rtol=1e-4, atol=1e-3)


def test_batch_norm_model_takes_vgg16_bn_layout(vgg_sd):
    # vgg16_bn's layout: the same convs and Linears under new indices, a BatchNorm after each conv.
    plain_src = {dst: src for src, dst in vgg16_key_map(False).items()}
    bn_sd = {}
    for src, dst in vgg16_key_map(True).items():
        if dst.endswith(".1"):
            c = vgg_sd[f"{plain_src[dst[:-1] + '0']}.weight"].shape[0]
            for i, p in enumerate(("weight", "bias", "running_mean", "running_var")):
                bn_sd[f"{src}.{p}"] = torch.full((c,), float(i + 1))
        else:
            for p in ("weight", "bias"):
                bn_sd[f"{src}.{p}"] = vgg_sd[f"{plain_src[dst]}.{p}"]
    converted = convert_vgg16_state_dict(bn_sd, backbone="vgg16-largefov", batch_norm=True)
    model = full_model(backbone="vgg16-largefov", batch_norm=True)
    missing, unexpected = model.load_state_dict(converted, strict=False)
    assert unexpected == []
    _assert_convs_loaded(model, bn_sd, batch_norm=True)
    assert torch.equal(model.conv5_3[1].running_var, torch.full((512,), 4.0))
    assert model.fc6[0].weight.shape == (1024, 512, 3, 3)
    # Not loaded: the BN of fc6/fc7 (not in VGG16), the head, and BN step counters.
    assert all(k.startswith(("fc6.1", "fc7.1", "fc7_", "pool6_", "fc7_score", "pool6_score")) or
               k.endswith("num_batches_tracked") for k in missing), missing


def test_features_only_weights_load_convs_and_warn(vgg_sd, tmp_path):
    sd = {k: v.clone() for k, v in vgg_sd.items() if k.startswith("features.")}
    for k in ("classifier.0", "classifier.3"):  # NaN classifier like IMAGENET1K_FEATURES, stored as 1-element views
        shape = vgg16_expected_shapes(False)[f"{k}.weight"]
        sd[f"{k}.weight"] = torch.tensor(math.nan).expand(shape)
        sd[f"{k}.bias"] = torch.tensor(math.nan).expand(shape[:1])
    torch.save(sd, tmp_path / "features.pth")
    model = full_model(backbone="vgg16-largefov")
    with torch.no_grad():
        model.fc6[0].weight.fill_(0.5)
    with pytest.warns(UserWarning, match="non-finite values"):
        load_vgg16_backbone(model, tmp_path / "features.pth")
    _assert_convs_loaded(model, sd)
    assert (model.fc6[0].weight == 0.5).all()


def test_legacy_format_file_loads(tmp_path):
    # torchvision's own 2017 checkpoint predates the zip format, which cannot be memory-mapped.
    torch.save(layout(value=0.25), tmp_path / "legacy.pth", _use_new_zipfile_serialization=False)
    model = load_vgg16_backbone(full_model(backbone="vgg16-largefov"), tmp_path / "legacy.pth")
    assert (model.conv3_2[0].weight == 0.25).all() and (model.fc7[0].bias == 0.25).all()


# --- bad input --------------------------------------------------------------


def test_mismatched_state_dict_lists_first_mismatches(tmp_path):
    sd = layout()
    sd["features.0.weight"] = torch.zeros(64, 1, 3, 3)
    del sd["features.28.bias"]
    sd["layer1.0.conv1.weight"] = torch.zeros(1)
    torch.save(sd, tmp_path / "bad.pth")
    with pytest.raises(ValueError) as err:
        load_vgg16_backbone(full_model(backbone="vgg16-largefov"), tmp_path / "bad.pth")
    msg = str(err.value)
    assert "does not match torchvision's vgg16 layout" in msg
    assert "missing: features.28.bias" in msg
    assert "unexpected: layer1.0.conv1.weight" in msg
    assert "wrong shape: features.0.weight: got (64, 1, 3, 3), expected (64, 3, 3, 3)" in msg


def test_plain_weights_into_batch_norm_model_say_so(tmp_path):
    torch.save(layout(), tmp_path / "plain.pth")
    with pytest.raises(ValueError, match=r"vgg16_bn layout; missing: .*\(\+\d+ more\).*looks like a vgg16 state dict"):
        load_vgg16_backbone(full_model(backbone="vgg16-largefov", batch_norm=True), tmp_path / "plain.pth")


def test_compact_model_is_rejected():
    with pytest.raises(ValueError, match=r"full-width model \(width=1.0\), got width=0.125"):
        load_vgg16_backbone(build_model(ParseNetConfig(width=1 / 8)), "IMAGENET1K_V1")


def test_unknown_weights_name():
    with pytest.raises(ValueError, match="unknown weights 'IMAGENET1K_V2' .*did you mean: IMAGENET1K_V1.*or the path"):
        load_vgg16_backbone(full_model(), "IMAGENET1K_V2")


def test_missing_file():
    with pytest.raises(FileNotFoundError, match="no state-dict file at"):
        load_vgg16_backbone(full_model(), "/nonexistent/vgg16.pth")


def test_file_without_a_state_dict(tmp_path):
    torch.save([1, 2], tmp_path / "list.pth")
    with pytest.raises(ValueError, match="holds a list, expected a state dict"):
        load_vgg16_backbone(full_model(), tmp_path / "list.pth")


def test_weights_enum_of_the_other_kind():
    with pytest.raises(ValueError, match="batch_norm=False; expected VGG16_Weights"):
        load_vgg16_backbone(full_model(), VGG16_BN_Weights.IMAGENET1K_V1)


def test_not_a_parsenet():
    with pytest.raises(TypeError, match="expects a ParseNet, got Linear"):
        load_vgg16_backbone(torch.nn.Linear(1, 1), "IMAGENET1K_V1")
