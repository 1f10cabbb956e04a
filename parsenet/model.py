"""ParseNet (Liu, Rabinovich, Berg 2015) and its FCN baseline on a VGG16 backbone.

The model, in the paper's names (Fig. 1 and Sec. 3)::

    conv1_1 ... pool5, fc6, fc7                    backbone (parsenet.backbones)
    fc7 -> fc7_norm ---------------------------.
    fc7 -> pool6 -> pool6_norm -> pool6_dropout -> unpool6 --+-> fusion -> score -> upscore -> "out"
    conv4_3 [-> conv4_3_pool] -> conv4_3_norm ---------------'   (optional lower layers)

* ``pool6`` is the global average of fc7 after ReLU (B, C, 1, 1); ``unpool6`` tiles it
  back over fc7's grid with ``expand_as``, so every output cell sees the whole image.
* ``*_norm`` is :class:`~parsenet.layers.L2Norm` (scale init 10), or ``nn.Identity``
  when normalisation is off.
* Fusion ``"late"`` (the authors' model): one 1x1 classifier per feature,
  ``fc7_score``, ``pool6_score``, ``conv4_3_score`` ..., and ``score`` sums them.
  Fusion ``"early"``: the features are concatenated in :attr:`ParseNet.branches`
  order and ``score`` is one 1x1 classifier. The two are the same function when the
  early classifier's weight is the late ones' side by side and its bias their sum.
* ``score`` holds the fused class scores at fc7's resolution; ``upscore`` brings them
  to the input size (:class:`~parsenet.layers.Upsample`).
* ``context="none"`` drops pool6 .. unpool6 and nothing else: the FCN baseline.
"""
from __future__ import annotations

import torch
from torch import nn

from parsenet.backbones import backbone_spec, conv_layer_names, vgg16_channels, vgg16_layers, vgg16_strides
from parsenet.config import ParseNetConfig
from parsenet.layers import L2Norm, SumFusion, Unpool, Upsample

__all__ = ["ParseNet", "build_model", "min_input_size", "parameter_groups", "BACKBONE_LAYERS"]

# Layers that an ImageNet VGG16 initialises (parsenet.pretrained), in forward order.
BACKBONE_LAYERS: tuple[str, ...] = tuple(conv_layer_names()) + tuple(f"pool{i}" for i in range(1, 6)) + ("fc6", "fc7")

_FC_DROPOUT = 0.5  # after fc6 and fc7, as in VGG16, FCN and DeepLab


def min_input_size(cfg: ParseNetConfig) -> int:
    """Smallest input height and width the model accepts: its output stride (one fc7 cell).

    Example:
        >>> min_input_size(ParseNetConfig(backbone="vgg16-fcn32s")), min_input_size(ParseNetConfig())
        (32, 8)
    """
    return backbone_spec(cfg.backbone).output_stride


def _check_input(x: torch.Tensor, minimum: int, backbone: str) -> None:
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"expected an image batch of shape (B, 3, H, W), got {tuple(x.shape)}")
    H, W = x.shape[-2:]
    if H < minimum or W < minimum:
        raise ValueError(
            f"input of {H}x{W} px is too small for {backbone}: the minimum is {minimum}x{minimum} px "
            f"(one cell at output stride {minimum})"
        )


class ParseNet(nn.Module):
    """ParseNet, or with ``context="none"`` its FCN baseline; every layer under the paper's name.

    Args:
        num_classes, backbone, width, batch_norm, context, fusion, normalize, scale_init,
        learn_scale, context_dropout, extra_layers, upsample, branch_loss: the fields of
        :class:`~parsenet.config.ParseNetConfig` (which documents each, with the same
        defaults); the validated config is kept as :attr:`config` for checkpoints.
        :func:`build_model` builds from a config.

    Attributes:
        config: the :class:`ParseNetConfig` this model was built from.
        branches: the fused features in concatenation order: ``"fc7"``, ``"pool6"``
            (with global context), then ``extra_layers`` in the order given.
        output_stride: input pixels per fc7 / score cell (8 or 32).
        min_input_size: smallest accepted input height and width.

    Forward:
        x: (B, 3, H, W) normalised images, ``H, W >= min_input_size``.

        Returns ``{"out": logits}`` with logits (B, num_classes, H, W). In training mode,
        with late fusion and ``branch_loss``, also ``"aux"``: ``{branch: logits}`` with each
        branch's own scores upsampled to (B, num_classes, H, W), for a loss per branch.

    Example:
        >>> model = build_model(ParseNetConfig(num_classes=5, width=1 / 8, batch_norm=True)).eval()
        >>> model(torch.zeros(2, 3, 96, 97))["out"].shape
        torch.Size([2, 5, 96, 97])
    """

    def __init__(
        self,
        *,
        num_classes: int = 21,
        backbone: str = "vgg16-largefov",
        width: float = 1.0,
        batch_norm: bool = False,
        context: str = "global",
        fusion: str = "late",
        normalize: bool = True,
        scale_init: float = 10.0,
        learn_scale: bool = True,
        context_dropout: float = 0.3,
        extra_layers: tuple[str, ...] = (),
        upsample: str = "bilinear",
        branch_loss: bool = False,
    ):
        super().__init__()
        cfg = ParseNetConfig(  # validates every argument and names the bad one
            num_classes=num_classes, backbone=backbone, width=width, batch_norm=batch_norm, context=context,
            fusion=fusion, normalize=normalize, scale_init=scale_init, learn_scale=learn_scale,
            context_dropout=context_dropout, extra_layers=tuple(extra_layers), upsample=upsample,
            branch_loss=branch_loss,
        )
        self.config = cfg
        spec = backbone_spec(cfg.backbone)
        self.output_stride = spec.output_stride
        self.min_input_size = spec.output_stride
        self.branch_loss = cfg.branch_loss
        self.branches: tuple[str, ...] = ("fc7",) + (("pool6",) if cfg.context == "global" else ()) + cfg.extra_layers

        # Backbone, conv1_1 ... fc7, registered as direct attributes in forward order.
        layers = vgg16_layers(cfg.backbone, width=cfg.width, batch_norm=cfg.batch_norm, fc_dropout=_FC_DROPOUT)
        for name, module in layers.items():
            self.add_module(name, module)
        self._backbone_names = tuple(layers)
        channels = vgg16_channels(cfg.backbone, cfg.width)
        strides = vgg16_strides(cfg.backbone)

        def norm(c: int) -> nn.Module:
            if not cfg.normalize:
                return nn.Identity()
            return L2Norm(c, scale_init=cfg.scale_init, learn_scale=cfg.learn_scale)

        # Global context (ParseNet Sec. 3.1): average fc7 over the image, normalise, tile back.
        if cfg.context == "global":
            self.pool6 = nn.AdaptiveAvgPool2d(1)
            self.pool6_norm = norm(channels["fc7"])
            self.pool6_dropout = nn.Dropout(cfg.context_dropout)
            self.unpool6 = Unpool()
        self.fc7_norm = norm(channels["fc7"])
        # Lower layers: average-pool onto fc7's grid (block means keep the cell centres
        # aligned, see parsenet.backbones), then normalise, each with its own scale.
        self._resized: set[str] = set()
        for layer in cfg.extra_layers:
            ratio = strides["fc7"] // strides[layer]
            if ratio > 1:
                self.add_module(f"{layer}_pool", nn.AvgPool2d(ratio, ratio))
                self._resized.add(layer)
            self.add_module(f"{layer}_norm", norm(channels[layer]))

        feature_channels = {"fc7": channels["fc7"], "pool6": channels["fc7"], **{l: channels[l] for l in cfg.extra_layers}}
        self.fusion = cfg.fusion
        if cfg.fusion == "late":
            for b in self.branches:
                self.add_module(f"{b}_score", nn.Conv2d(feature_channels[b], cfg.num_classes, 1))
            self.score = SumFusion() if len(self.branches) > 1 else nn.Identity()
        else:
            self.score = nn.Conv2d(sum(feature_channels[b] for b in self.branches), cfg.num_classes, 1)
        self.upscore = Upsample(cfg.num_classes, stride=spec.output_stride, learnable=cfg.upsample == "deconv")
        self._init_weights()

    def _init_weights(self) -> None:
        for name, m in self.named_modules():
            if isinstance(m, nn.Conv2d):
                if name.endswith("score"):  # classifiers: N(0, 0.01), as DeepLab's fc8
                    nn.init.normal_(m.weight, std=0.01)
                else:  # torchvision's VGG init
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> dict:
        if not isinstance(x, torch.fx.Proxy):  # while fx traces, shapes are symbolic
            _check_input(x, self.min_input_size, self.config.backbone)
        taps = {}
        f = x
        for name in self._backbone_names:
            f = getattr(self, name)(f)  # conv / pool / fc: (B, C, H // stride, W // stride)
            if name in self.config.extra_layers:
                taps[name] = f
        fc7 = f  # (B, C7, h, w), post-ReLU (and dropout in training)

        feats = {"fc7": self.fc7_norm(fc7)}  # (B, C7, h, w)
        if "pool6" in self.branches:
            pool6 = self.pool6(fc7)  # (B, C7, 1, 1): global average
            pool6 = self.pool6_dropout(self.pool6_norm(pool6))  # (B, C7, 1, 1)
            feats["pool6"] = self.unpool6(pool6, fc7)  # (B, C7, h, w): the same vector everywhere
        for layer in self.config.extra_layers:
            t = taps[layer]  # (B, C_l, H // s_l, W // s_l)
            if layer in self._resized:
                t = getattr(self, f"{layer}_pool")(t)  # (B, C_l, h, w)
            feats[layer] = getattr(self, f"{layer}_norm")(t)

        if self.fusion == "late":
            scores = {b: getattr(self, f"{b}_score")(feats[b]) for b in self.branches}  # each (B, K, h, w)
            score = self.score(*scores.values())  # (B, K, h, w)
        else:
            score = self.score(torch.cat([feats[b] for b in self.branches], dim=1))  # (B, K, h, w)

        out = {"out": self.upscore(score, x)}  # (B, K, H, W)
        if self.branch_loss and self.training:
            out["aux"] = {b: self.upscore(s, x) for b, s in scores.items()}
        return out


def build_model(cfg: ParseNetConfig) -> ParseNet:
    """Build the ParseNet / FCN variant ``cfg`` describes, randomly initialised.

    Load ImageNet weights into it with :func:`parsenet.pretrained.load_vgg16_backbone`.

    Example:
        >>> model = build_model(ParseNetConfig(backbone="vgg16-fcn32s", context="none", width=1 / 8))
        >>> model.config.context, model.output_stride
        ('none', 32)
    """
    if not isinstance(cfg, ParseNetConfig):
        raise TypeError(f"build_model expects a ParseNetConfig, got {type(cfg).__name__}")
    return ParseNet(**{f: getattr(cfg, f) for f in cfg.__dataclass_fields__})


def parameter_groups(model: ParseNet) -> dict[str, list[nn.Parameter]]:
    """Split parameters into those an ImageNet VGG16 initialises and the new ones.

    Following DeepLab and ParseNet practice, which train only the new layers at 10x
    the base learning rate:

    * ``"backbone"``: conv1_1 ... conv5_3, fc6 and fc7 (BatchNorm included). fc6/fc7
      count as backbone for LargeFOV too: DeepLab initialises them by subsampling
      VGG16's fc6/fc7 and trains them at the base rate.
    * ``"head"``: everything new: the 1x1 classifiers, the L2-norm scales and a
      learnable ``upscore``.

    Every trainable parameter is in exactly one group.

    Example:
        >>> groups = parameter_groups(build_model(ParseNetConfig(width=1 / 8)))
        >>> sorted(groups), len(groups["head"])  # fc7/pool6 scales, fc7/pool6 classifiers
        (['backbone', 'head'], 6)
    """
    if not isinstance(model, ParseNet):
        raise TypeError(f"parameter_groups expects a ParseNet, got {type(model).__name__}")
    groups: dict[str, list[nn.Parameter]] = {"backbone": [], "head": []}
    for name, p in model.named_parameters():
        groups["backbone" if name.split(".", 1)[0] in BACKBONE_LAYERS else "head"].append(p)
    return groups
