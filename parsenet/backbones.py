"""VGG16 backbones for ParseNet: FCN-32s and DeepLab-LargeFOV, with the paper's layer names.

Both follow torchvision's VGG16 definition (13 3x3 convs in 5 stages, ReLU after
each, optional BatchNorm between conv and ReLU as in ``vgg16_bn``), so ImageNet
weights load one-to-one (see :mod:`parsenet.pretrained`). They differ after conv4:

=================  ==========================  ===================================
layer              ``vgg16-fcn32s`` (FCN)      ``vgg16-largefov`` (DeepLab)
=================  ==========================  ===================================
pool1 ... pool3    2x2, stride 2               2x2, stride 2
pool4              2x2, stride 2               3x3, stride 1, pad 1
conv5_1 ... 5_3    3x3                         3x3, dilation 2
pool5              2x2, stride 2               3x3, stride 1, pad 1
fc6                7x7, 4096 (pad 3)           3x3, dilation 12, 1024
fc7                1x1, 4096                   1x1, 1024
output stride      32                          8
=================  ==========================  ===================================

fc6 and fc7 are each conv[, BN], ReLU, Dropout(0.5). Every layer keeps its
input's grid ("same" padding, floor-mode 2x2 pools), so cell ``i`` of a layer
with stride ``s`` is centred on pixel ``s * i + (s - 1) / 2``; bilinear
upsampling with ``align_corners=False`` is therefore exact (:mod:`parsenet.layers`).

Two deliberate differences from the Caffe models, neither of which changes a
weight or the receptive field of fc7 (404 px for FCN-32s):

* FCN pads conv1_1 by 100 px and crops the upsampled scores; here fc6 is padded
  by 3 instead, so a 224 px image gives a 7x7 fc7 map whose centre cell sees
  exactly the 7x7 pool5 window of the ImageNet classifier.
* DeepLab's pool1-pool3 are 3x3, stride 2, pad 1 in Caffe's ceil mode, which
  puts cell ``i`` on pixel ``8 i`` instead of ``8 i + 3.5``; torchvision's 2x2
  pools are kept so that both backbones share one grid convention.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from torch import nn

from erf.util import unknown_name
from parsenet.config import BACKBONES

__all__ = [
    "BackboneSpec",
    "BACKBONE_SPECS",
    "VGG16_STAGES",
    "backbone_spec",
    "scaled_channels",
    "vgg16_layers",
    "vgg16_channels",
    "vgg16_strides",
    "conv_layer_names",
]

# torchvision's VGG16 ("D"): output channels of each 3x3 conv, one tuple per stage.
VGG16_STAGES: tuple[tuple[int, ...], ...] = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))


@dataclass(frozen=True)
class BackboneSpec:
    """What distinguishes one VGG16 backbone from another.

    Args:
        name: the backbone's name in :data:`parsenet.config.BACKBONES`.
        pools: (kernel, stride, padding) of pool1 ... pool5.
        conv5_dilation: dilation (= padding) of the 3x3 convs in stage 5.
        fc6_kernel: kernel size of fc6.
        fc6_dilation: dilation of fc6.
        fc_channels: channels of fc6 and fc7 at width 1.
        output_stride: input pixels per fc7 cell.
    """

    name: str
    pools: tuple[tuple[int, int, int], ...]
    conv5_dilation: int
    fc6_kernel: int
    fc6_dilation: int
    fc_channels: int
    output_stride: int

    @property
    def fc6_padding(self) -> int:
        """Padding that keeps fc6 on pool5's grid: ``dilation * (kernel - 1) / 2``."""
        return self.fc6_dilation * (self.fc6_kernel - 1) // 2


BACKBONE_SPECS: dict[str, BackboneSpec] = {
    # FCN-32s (Long et al. 2015, Sec. 3.1): VGG16 with its classifier cast to convolutions.
    "vgg16-fcn32s": BackboneSpec(
        name="vgg16-fcn32s",
        pools=((2, 2, 0),) * 5,
        conv5_dilation=1,
        fc6_kernel=7,
        fc6_dilation=1,
        fc_channels=4096,
        output_stride=32,
    ),
    # DeepLab-LargeFOV (Chen et al. 2015, Sec. 4.1 and Table 2): pool4/pool5 no longer
    # subsample, conv5 is dilated by 2, fc6 is 3x3 with dilation 12 and 1024 channels.
    "vgg16-largefov": BackboneSpec(
        name="vgg16-largefov",
        pools=((2, 2, 0),) * 3 + ((3, 1, 1),) * 2,
        conv5_dilation=2,
        fc6_kernel=3,
        fc6_dilation=12,
        fc_channels=1024,
        output_stride=8,
    ),
}
assert set(BACKBONE_SPECS) == set(BACKBONES)


def backbone_spec(backbone: str) -> BackboneSpec:
    """The :class:`BackboneSpec` of ``backbone``; a ValueError listing the valid names otherwise."""
    if backbone not in BACKBONE_SPECS:
        raise unknown_name("backbone", backbone, BACKBONE_SPECS, show_all=True)
    return BACKBONE_SPECS[backbone]


def scaled_channels(channels: int, width: float) -> int:
    """``channels * width`` rounded, at least 1: the channel count of a compact variant.

    Example:
        >>> scaled_channels(512, 1 / 8), scaled_channels(3, 0.1)
        (64, 1)
    """
    if not width > 0:
        raise ValueError(f"width multiplier must be > 0, got {width}")
    return max(1, int(round(channels * width)))


def conv_layer_names() -> list[str]:
    """``["conv1_1", "conv1_2", "conv2_1", ..., "conv5_3"]`` in forward order."""
    return [f"conv{s + 1}_{i + 1}" for s, stage in enumerate(VGG16_STAGES) for i in range(len(stage))]


def _conv_block(c_in: int, c_out: int, *, kernel: int, dilation: int, batch_norm: bool, dropout: float = 0.0) -> nn.Sequential:
    # conv[, BN], ReLU[, Dropout]: the block's output is post-ReLU, like Caffe's in-place ReLU.
    padding = dilation * (kernel - 1) // 2
    layers: list[nn.Module] = [
        nn.Conv2d(c_in, c_out, kernel, padding=padding, dilation=dilation)
    ]
    if batch_norm:
        layers.append(nn.BatchNorm2d(c_out))
    layers.append(nn.ReLU())
    if dropout:
        layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


def vgg16_layers(backbone: str, *, width: float = 1.0, batch_norm: bool = False, fc_dropout: float = 0.5) -> "OrderedDict[str, nn.Module]":
    """The backbone's layers, conv1_1 ... fc7, in forward order under the paper's names.

    Each ``convS_I`` is ``Sequential(Conv2d[, BatchNorm2d], ReLU)``; ``fc6`` and ``fc7`` are
    ``Sequential(Conv2d[, BatchNorm2d], ReLU, Dropout(fc_dropout))``; ``poolS`` is a MaxPool2d.
    Convs keep their bias under BatchNorm, as in ``vgg16_bn``, so its weights load one-to-one.

    Args:
        backbone: ``"vgg16-fcn32s"`` or ``"vgg16-largefov"``.
        width: channel multiplier; every layer's channels are ``scaled_channels(c, width)``.
        batch_norm: BatchNorm2d after every conv, fc6 and fc7 included.
        fc_dropout: dropout after fc6 and fc7 (FCN, DeepLab: 0.5).

    Returns:
        Ordered ``{name: module}``; chained in order they map (B, 3, H, W) to fc7's
        (B, C, H // s, W // s) with ``s`` the output stride.

    Example:
        >>> layers = vgg16_layers("vgg16-largefov", width=1 / 8)
        >>> list(layers)[:3], layers["fc7"][0].out_channels
        (['conv1_1', 'conv1_2', 'pool1'], 128)
    """
    spec = backbone_spec(backbone)
    bn = bool(batch_norm)
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    c_in = 3
    for s, stage in enumerate(VGG16_STAGES):
        dilation = spec.conv5_dilation if s == 4 else 1
        for i, c in enumerate(stage):
            c_out = scaled_channels(c, width)
            layers[f"conv{s + 1}_{i + 1}"] = _conv_block(c_in, c_out, kernel=3, dilation=dilation, batch_norm=bn)
            c_in = c_out
        kernel, stride, padding = spec.pools[s]
        layers[f"pool{s + 1}"] = nn.MaxPool2d(kernel, stride, padding)
    c_fc = scaled_channels(spec.fc_channels, width)
    layers["fc6"] = _conv_block(c_in, c_fc, kernel=spec.fc6_kernel, dilation=spec.fc6_dilation, batch_norm=bn, dropout=fc_dropout)
    layers["fc7"] = _conv_block(c_fc, c_fc, kernel=1, dilation=1, batch_norm=bn, dropout=fc_dropout)
    return layers


def vgg16_channels(backbone: str, width: float = 1.0) -> dict[str, int]:
    """Output channels of every named layer (pools included).

    Example:
        >>> vgg16_channels("vgg16-fcn32s")["conv4_3"], vgg16_channels("vgg16-fcn32s")["fc7"]
        (512, 4096)
    """
    spec = backbone_spec(backbone)
    channels: dict[str, int] = {}
    for s, stage in enumerate(VGG16_STAGES):
        for i, c in enumerate(stage):
            channels[f"conv{s + 1}_{i + 1}"] = scaled_channels(c, width)
        channels[f"pool{s + 1}"] = scaled_channels(stage[-1], width)
    channels["fc6"] = channels["fc7"] = scaled_channels(spec.fc_channels, width)
    return channels


def vgg16_strides(backbone: str) -> dict[str, int]:
    """Input pixels per cell (the jump) of every named layer.

    A map of stride ``s`` has ``H // s`` rows for an ``H``-row input (all pools floor).

    Example:
        >>> strides = vgg16_strides("vgg16-largefov")
        >>> strides["conv3_3"], strides["conv5_3"], strides["fc7"]
        (4, 8, 8)
    """
    spec = backbone_spec(backbone)
    strides: dict[str, int] = {}
    jump = 1
    for s, stage in enumerate(VGG16_STAGES):
        for i in range(len(stage)):
            strides[f"conv{s + 1}_{i + 1}"] = jump
        jump *= spec.pools[s][1]
        strides[f"pool{s + 1}"] = jump
    strides["fc6"] = strides["fc7"] = jump
    assert jump == spec.output_stride
    return strides
