"""erf: theoretical and empirical receptive fields of CNN neurons.

Theoretical RFs come from layer arithmetic (:mod:`erf.rf`); empirical RFs from
the sliding-noise occlusion probe of Zhou et al. 2015 (:mod:`erf.occlusion`,
exact and incremental with :mod:`erf.incremental`) and the gradient ERF of
Luo et al. 2016 (:mod:`erf.gradient`), summarised by :mod:`erf.stats` and
stored as :class:`erf.result.ERFResult`.
"""
from erf.gradient import GradientConfig, probe_gradient
from erf.graph import TruncatedModel, layer_channels, layer_names, resolve_layer, truncate
from erf.distributed import ProcessShard, join_process_group, shard_indices
from erf.images import IMAGENET_MEAN, IMAGENET_STD, ImageSet, images_from_dataset, load_images
from erf.incremental import IncrementalOcclusion, MacCount
from erf.models import LoadedModel, load_model, register_model_loader
from erf.occlusion import (ENGINES, NOISE_KINDS, PRECISIONS, FullReinference, OcclusionConfig, make_patches,
                           occluder_positions, probe_occlusion, select_units)
from erf.result import ERFResult
from erf.rf import LayerRF, receptive_field, receptive_fields
from erf.runner import ProbeSettings, run_probe
from erf.stats import (ERFStats, GaussianFit, bootstrap_means, centered_square, erf_stats, far_field_share, fit_gaussian,
                       percentile_interval, second_moment_radius, threshold_area)

__all__ = [
    "LayerRF", "receptive_field", "receptive_fields",
    "layer_names", "resolve_layer", "truncate", "TruncatedModel", "layer_channels",
    "LoadedModel", "load_model", "register_model_loader",
    "ImageSet", "load_images", "images_from_dataset", "IMAGENET_MEAN", "IMAGENET_STD",
    "probe_occlusion", "OcclusionConfig", "occluder_positions", "make_patches", "select_units", "FullReinference",
    "IncrementalOcclusion", "MacCount", "ENGINES", "NOISE_KINDS", "PRECISIONS",
    "probe_gradient", "GradientConfig",
    "ProbeSettings", "run_probe",
    "ProcessShard", "join_process_group", "shard_indices",
    "ERFStats", "GaussianFit", "erf_stats", "fit_gaussian", "centered_square", "threshold_area", "ERFResult",
    "far_field_share", "second_moment_radius", "bootstrap_means", "percentile_interval",
]
