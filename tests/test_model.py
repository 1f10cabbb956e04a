import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.feature_extraction import create_feature_extractor

from erf.graph import layer_names, truncate
from erf.rf import receptive_field
from parsenet.backbones import vgg16_channels, vgg16_layers, vgg16_strides
from parsenet.config import ParseNetConfig
from parsenet.layers import L2Norm
from parsenet.model import BACKBONE_LAYERS, ParseNet, build_model, min_input_size, parameter_groups

W = 1 / 8  # compact width for every test


def compact(**kw) -> ParseNet:
    return build_model(ParseNetConfig(num_classes=kw.pop("num_classes", 5), width=kw.pop("width", W), **kw))


# --- every variant: shape at several sizes, no NaN, every parameter gets a gradient

VARIANTS = [
    dict(backbone=b, context=c, fusion=f, batch_norm=bn)
    for b in ("vgg16-largefov", "vgg16-fcn32s")
    for c in ("global", "none")
    for f in ("late", "early")
    for bn in (False, True)
] + [
    dict(backbone="vgg16-largefov", extra_layers=("conv3_3", "conv4_3", "conv5_3"), upsample="deconv"),
    dict(backbone="vgg16-fcn32s", extra_layers=("conv4_3", "conv5_3"), fusion="early", upsample="deconv"),
    dict(backbone="vgg16-largefov", normalize=False, learn_scale=False),
    dict(backbone="vgg16-largefov", batch_norm=True, branch_loss=True),
]
SIZES = {"vgg16-largefov": [(8, 8), (37, 50)], "vgg16-fcn32s": [(32, 32), (65, 97)]}


def _id(v):
    return "-".join(str(x) if not isinstance(x, tuple) else "+".join(x) for x in v.values())


@pytest.mark.parametrize("variant", VARIANTS, ids=_id)
def test_smoke_every_variant(variant):
    model = compact(**variant).train()
    for H, Wd in SIZES[variant["backbone"]]:
        model.zero_grad()
        out = model(torch.randn(2, 3, H, Wd))
        logits = out["out"]
        assert logits.shape == (2, 5, H, Wd)
        assert torch.isfinite(logits).all()
        loss = logits.square().mean() + sum(a.square().mean() for a in out.get("aux", {}).values())
        loss.backward()
        missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
        assert not missing, f"no gradient at {H}x{Wd} for {missing}"


def test_branch_loss_returns_each_branch_in_training_only():
    model = compact(extra_layers=("conv4_3",), branch_loss=True)
    x = torch.randn(1, 3, 40, 24)
    aux = model.train()(x)["aux"]
    assert list(aux) == ["fc7", "pool6", "conv4_3"]
    assert all(a.shape == (1, 5, 40, 24) for a in aux.values())
    assert list(model.eval()(x)) == ["out"]


# --- structure: names, channels and strides match the backbone tables


def test_layer_names_are_the_papers():
    model = compact(extra_layers=("conv4_3",))
    top = [n for n, _ in model.named_children()]
    assert top == [
        "conv1_1", "conv1_2", "pool1", "conv2_1", "conv2_2", "pool2", "conv3_1", "conv3_2", "conv3_3", "pool3",
        "conv4_1", "conv4_2", "conv4_3", "pool4", "conv5_1", "conv5_2", "conv5_3", "pool5", "fc6", "fc7",
        "pool6", "pool6_norm", "pool6_dropout", "unpool6", "fc7_norm", "conv4_3_norm",
        "fc7_score", "pool6_score", "conv4_3_score", "score", "upscore",
    ]
    assert set(top) <= set(layer_names(model))
    assert "pool6" not in dict(compact(context="none").named_children())


@pytest.mark.parametrize("backbone", ["vgg16-largefov", "vgg16-fcn32s"])
def test_feature_maps_match_recorded_channels_and_strides(backbone):
    model = compact(backbone=backbone).eval()
    names = [n for n, _ in vgg16_layers(backbone).items()]
    body = create_feature_extractor(model, return_nodes={n: n for n in names + ["pool6", "score"]})
    H, Wd = 70, 101
    feats = body(torch.randn(1, 3, H, Wd))
    channels, strides = vgg16_channels(backbone, W), vgg16_strides(backbone)
    for n in names:
        assert feats[n].shape == (1, channels[n], H // strides[n], Wd // strides[n]), n
    h, w = H // model.output_stride, Wd // model.output_stride
    assert feats["pool6"].shape == (1, channels["fc7"], 1, 1)
    assert feats["score"].shape == (1, 5, h, w)


def test_full_width_channels_are_vgg16():
    c = vgg16_channels("vgg16-largefov")
    assert (c["conv1_1"], c["conv3_3"], c["conv5_3"], c["fc7"]) == (64, 256, 512, 1024)
    assert vgg16_channels("vgg16-fcn32s")["fc6"] == 4096


def test_layers_are_post_relu_and_truncatable():
    model = compact().eval()
    x = torch.randn(1, 3, 48, 48)
    conv4_3 = truncate(model, "conv4_3")(x)
    assert conv4_3.min() >= 0 and conv4_3.shape == (1, 64, 6, 6)
    score = truncate(model, "score")(x)
    assert torch.allclose(model.upscore(score, x), model(x)["out"], atol=1e-6)


def test_fc6_geometry():
    fcn = compact(backbone="vgg16-fcn32s").fc6[0]
    assert (fcn.kernel_size, fcn.dilation, fcn.padding) == ((7, 7), (1, 1), (3, 3))
    fov = compact().fc6[0]
    assert (fov.kernel_size, fov.dilation, fov.padding, fov.out_channels) == ((3, 3), (12, 12), (12, 12), 128)
    assert compact().conv5_2[0].dilation == (2, 2)
    assert isinstance(compact(batch_norm=True).conv1_1[1], nn.BatchNorm2d)


# --- fusion ---------------------------------------------------------------


@pytest.mark.parametrize("backbone", ["vgg16-largefov", "vgg16-fcn32s"])
def test_late_fusion_equals_early_fusion_with_corresponding_weights(backbone):
    extra = ("conv4_3",)
    late = compact(backbone=backbone, fusion="late", extra_layers=extra).eval()
    early = compact(backbone=backbone, fusion="early", extra_layers=extra).eval()
    assert late.branches == early.branches == ("fc7", "pool6", "conv4_3")
    shared = {k: v for k, v in late.state_dict().items() if "score" not in k}
    early.load_state_dict(shared, strict=False)
    with torch.no_grad():
        early.score.weight.copy_(torch.cat([getattr(late, f"{b}_score").weight for b in late.branches], dim=1))
        early.score.bias.copy_(sum(getattr(late, f"{b}_score").bias for b in late.branches))
    x = torch.randn(2, 3, 64, 72)
    assert torch.allclose(late(x)["out"], early(x)["out"], atol=1e-5)


def test_normalize_off_fuses_raw_features():
    model = compact(normalize=False).eval()
    assert not any(isinstance(m, L2Norm) for m in model.modules())
    x = torch.randn(1, 3, 40, 56)
    fc7 = truncate(model, "fc7")(x)  # (1, 128, 5, 7)
    pool6 = fc7.mean(dim=(2, 3), keepdim=True).expand_as(fc7)
    expected = model.upscore(model.fc7_score(fc7) + model.pool6_score(pool6), x)
    assert torch.allclose(model(x)["out"], expected, atol=1e-5)


def test_normalized_features_have_the_scale_as_norm():
    model = compact(scale_init=7.0).eval()
    fc7_norm = truncate(model, "fc7_norm")(torch.randn(1, 3, 32, 32))
    alive = fc7_norm.abs().sum(dim=1) > 0  # pixels where fc7 is not all zero after ReLU
    assert alive.any()
    assert torch.allclose(fc7_norm.norm(dim=1)[alive], torch.tensor(7.0), rtol=1e-5)


def test_fixed_scale_is_not_trained_and_checkpoints_interchange():
    fixed, learned = compact(learn_scale=False), compact()
    assert all("scale" not in n for n, _ in fixed.named_parameters())
    assert fixed.state_dict().keys() == learned.state_dict().keys()
    fixed.load_state_dict(learned.state_dict())


# --- global context: a corner pixel reaches the opposite corner only through pool6


@pytest.mark.parametrize("backbone", ["vgg16-fcn32s", "vgg16-largefov"])
def test_context_changes_far_corner_prediction(backbone):
    # Output pixel (0, 0) reads only score cell (0, 0) (clamped upsampling). Without
    # context that cell's theoretical RF stops short of the bottom-right pixel at 224 px,
    # so only the global average can carry a change there to the top-left corner.
    x = torch.randn(1, 3, 224, 224)
    x2 = x.clone()
    x2[0, :, -1, -1] += 10.0
    for context, reaches in (("global", True), ("none", False)):
        model = compact(backbone=backbone, context=context).eval()
        top, left, bottom, right = receptive_field(model, "score", 224).box(0, 0)
        assert (bottom >= 224 and right >= 224) == reaches, (context, bottom, right)
        with torch.no_grad():
            before, after = model(x)["out"][0, :, 0, 0], model(x2)["out"][0, :, 0, 0]
        assert (not torch.equal(before, after)) == reaches, context


@pytest.mark.parametrize("backbone, rf, jump", [("vgg16-fcn32s", 404, 32), ("vgg16-largefov", 412, 8)])
def test_theoretical_rf_of_fc7_and_fused_score(backbone, rf, jump):
    # FCN-32s fc7: VGG16's pool5 (212 px) plus fc6's 6 extra taps at jump 32.
    # LargeFOV fc7: pool5 (220 px, hand-summed per layer) plus fc6's 24 px dilation span at jump 8.
    for context in ("global", "none"):
        model = compact(backbone=backbone, context=context, extra_layers=("conv3_3", "conv4_3"))
        fc7 = receptive_field(model, "fc7", (224, 160))
        assert (fc7.rf, fc7.jump, fc7.is_global) == ((rf, rf), (jump, jump), False)
        assert fc7.start == ((jump - 1) / 2,) * 2  # cell i centred on pixel jump * i + (jump - 1) / 2
        score = receptive_field(model, "score", (224, 160))
        assert score.is_global == (context == "global")
        if context == "none":  # the resized lower layers sit on fc7's grid: same centres and jump
            assert (score.rf, score.jump, score.start) == (fc7.rf, fc7.jump, fc7.start)


def test_context_is_per_image_not_per_batch():
    model = compact(batch_norm=True).eval()
    x = torch.randn(3, 3, 48, 40)
    together = model(x)["out"]
    alone = torch.cat([model(x[i : i + 1])["out"] for i in range(3)])
    assert torch.allclose(together, alone, atol=1e-5)


# --- parameter groups ------------------------------------------------------


def test_parameter_groups_split_pretrained_from_new_layers():
    model = compact(extra_layers=("conv4_3",), upsample="deconv")
    groups = parameter_groups(model)
    names = {id(p): n for n, p in model.named_parameters()}
    head = sorted(names[id(p)] for p in groups["head"])
    assert head == sorted([
        "fc7_norm.scale", "pool6_norm.scale", "conv4_3_norm.scale",
        "fc7_score.weight", "fc7_score.bias", "pool6_score.weight", "pool6_score.bias",
        "conv4_3_score.weight", "conv4_3_score.bias", "upscore.weight",
    ])
    backbone = {names[id(p)].split(".")[0] for p in groups["backbone"]}
    assert backbone == {n for n in BACKBONE_LAYERS if not n.startswith("pool")}
    assert len(groups["head"]) + len(groups["backbone"]) == len(list(model.parameters()))


def test_parameter_groups_rejects_other_models():
    with pytest.raises(TypeError, match="expects a ParseNet, got Linear"):
        parameter_groups(nn.Linear(2, 2))


# --- a compact ParseNet and its FCN baseline train side by side -------------


def test_compact_parsenet_and_fcn_train_together():
    # Each image is one class, marked by a colour shift: learnable by both models.
    labels = torch.tensor([0, 1, 2, 1])
    x = torch.randn(4, 3, 32, 32) + 2 * F.one_hot(labels, 3).float()[:, :, None, None]
    y = labels[:, None, None].expand(4, 32, 32)
    models = {c: compact(num_classes=3, context=c, batch_norm=True).train() for c in ("global", "none")}
    optims = {}
    for c, m in models.items():
        groups = parameter_groups(m)
        optims[c] = torch.optim.SGD(
            [{"params": groups["backbone"], "lr": 0.01}, {"params": groups["head"], "lr": 0.1}], momentum=0.9
        )
    losses = {c: [] for c in models}
    for _ in range(6):
        for c, m in models.items():
            loss = F.cross_entropy(m(x)["out"], y)
            optims[c].zero_grad()
            loss.backward()
            optims[c].step()
            losses[c].append(loss.item())
    for c, ls in losses.items():
        assert all(torch.isfinite(torch.tensor(ls))), c
        assert ls[-1] < 0.8 * ls[0], (c, ls)


# --- configuration and bad input -------------------------------------------


def test_config_round_trip_rebuilds_the_same_model():
    model = compact(extra_layers=("conv5_3",), fusion="early").eval()
    rebuilt = build_model(ParseNetConfig.from_dict(model.config.to_dict())).eval()
    rebuilt.load_state_dict(model.state_dict())
    x = torch.randn(1, 3, 24, 40)
    assert torch.equal(model(x)["out"], rebuilt(x)["out"])


def test_module_defaults_are_the_config_defaults():
    assert ParseNet(width=W).config == ParseNetConfig(width=W)


def test_build_model_rejects_non_config():
    with pytest.raises(TypeError, match="expects a ParseNetConfig, got dict"):
        build_model({"backbone": "vgg16-fcn32s"})


def test_min_input_size():
    assert min_input_size(ParseNetConfig(backbone="vgg16-fcn32s")) == 32
    assert min_input_size(ParseNetConfig(backbone="vgg16-largefov")) == 8
    compact(backbone="vgg16-fcn32s").eval()(torch.zeros(1, 3, 32, 32))  # the minimum itself works


def test_too_small_input_names_the_minimum():
    with pytest.raises(ValueError, match=r"31x64 px is too small for vgg16-fcn32s: the minimum is 32x32"):
        compact(backbone="vgg16-fcn32s")(torch.zeros(1, 3, 31, 64))


def test_wrong_channel_count_is_an_error():
    with pytest.raises(ValueError, match=r"shape \(B, 3, H, W\), got \(1, 1, 64, 64\)"):
        compact()(torch.zeros(1, 1, 64, 64))


def test_unknown_backbone():
    with pytest.raises(ValueError, match="unknown backbone 'vgg16-largfov' .*did you mean: vgg16-largefov"):
        ParseNet(backbone="vgg16-largfov")


def test_unknown_context():
    with pytest.raises(ValueError, match="unknown context 'globl' .*expected one of: global, none"):
        ParseNet(context="globl")


def test_unknown_fusion():
    with pytest.raises(ValueError, match="unknown fusion 'erly' .*expected one of: late, early"):
        ParseNet(fusion="erly")


@pytest.mark.parametrize("width", [0, -0.5])
def test_width_must_be_positive(width):
    with pytest.raises(ValueError, match=f"width multiplier must be > 0, got {width}"):
        ParseNet(width=width)


def test_branch_loss_needs_late_fusion():
    with pytest.raises(ValueError, match="branch_loss needs fusion='late'"):
        ParseNet(fusion="early", branch_loss=True, width=W)
