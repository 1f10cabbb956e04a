"""The one frozen config that builds every ParseNet / FCN variant.

``dataclasses.asdict(cfg)`` is stored in every checkpoint, so a model is
rebuilt from the checkpoint file alone: ``build_model(ParseNetConfig(**d))``.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

from erf.util import check_field_types, unknown_name

__all__ = ["ParseNetConfig", "BACKBONES", "CONTEXTS", "FUSIONS", "UPSAMPLES"]

BACKBONES = ("vgg16-largefov", "vgg16-fcn32s")
CONTEXTS = ("global", "none")
FUSIONS = ("late", "early")
UPSAMPLES = ("bilinear", "deconv")
EXTRA_LAYERS = ("conv3_3", "conv4_3", "conv5_3")


@dataclass(frozen=True)
class ParseNetConfig:
    """Every choice that changes the model's structure.

    Args:
        num_classes: output classes, background included (VOC: 21).
        backbone: ``"vgg16-largefov"`` (DeepLab-LargeFOV, output stride 8, as the
            ParseNet authors used on VOC) or ``"vgg16-fcn32s"`` (FCN-32s, stride 32).
        width: channel width multiplier; 1.0 is the paper's model, 1/8 the compact CPU one.
        batch_norm: BatchNorm after every conv (like torchvision's ``vgg16_bn``).
        context: ``"global"`` is ParseNet; ``"none"`` the FCN baseline with the same backbone and head.
        fusion: ``"late"`` sums one classifier's scores per feature (the authors' model);
            ``"early"`` concatenates the features and applies one classifier.
        normalize: L2-normalise each fused feature per pixel across channels (ParseNet Sec. 3.2).
        scale_init: initial value of the per-channel scale after L2 norm (ParseNet: 10).
        learn_scale: learn the scale (True) or keep it fixed at ``scale_init``.
        context_dropout: dropout on the normalised global feature (ParseNet: 0.3).
        extra_layers: lower layers fused as well, e.g. ``("conv4_3", "conv5_3")``.
        upsample: ``"bilinear"`` interpolation or a learnable ``"deconv"`` initialised bilinear.
        branch_loss: with late fusion (required), also return each branch's scores for a loss of its own.
    """

    num_classes: int = 21
    backbone: str = "vgg16-largefov"
    width: float = 1.0
    batch_norm: bool = False
    context: str = "global"
    fusion: str = "late"
    normalize: bool = True
    scale_init: float = 10.0
    learn_scale: bool = True
    context_dropout: float = 0.3
    extra_layers: tuple[str, ...] = field(default_factory=tuple)
    upsample: str = "bilinear"
    branch_loss: bool = False

    def __post_init__(self) -> None:
        check_field_types(ParseNetConfig, {f.name: getattr(self, f.name) for f in fields(self)}, "ParseNetConfig:")
        for name, value, valid in (
            ("backbone", self.backbone, BACKBONES),
            ("context", self.context, CONTEXTS),
            ("fusion", self.fusion, FUSIONS),
            ("upsample", self.upsample, UPSAMPLES),
        ):
            if value not in valid:
                raise unknown_name(name, value, valid, show_all=True)
        for layer in self.extra_layers:
            if layer not in EXTRA_LAYERS:
                raise unknown_name("extra layer", layer, EXTRA_LAYERS, show_all=True)
        object.__setattr__(self, "extra_layers", tuple(self.extra_layers))
        if not self.width > 0:
            raise ValueError(f"width multiplier must be > 0, got {self.width}")
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {self.num_classes}")
        if self.branch_loss and self.fusion != "late":
            raise ValueError(f"branch_loss needs fusion='late' (one classifier per feature), got fusion={self.fusion!r}")
        if not 0 <= self.context_dropout < 1:
            raise ValueError(f"context_dropout must be in [0, 1), got {self.context_dropout}")

    def to_dict(self) -> dict:
        """Plain dict for checkpoints and JSON (tuples become lists)."""
        d = asdict(self)
        d["extra_layers"] = list(self.extra_layers)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ParseNetConfig":
        """Inverse of :meth:`to_dict`; unknown keys are an error naming them."""
        known = {f.name for f in fields(cls)}
        extra = sorted(set(d) - known)
        if extra:
            raise ValueError(f"unknown ParseNet config keys {extra}; expected a subset of {sorted(known)}")
        d = dict(d)
        if "extra_layers" in d:
            d["extra_layers"] = tuple(d["extra_layers"])
        return cls(**d)
