"""figures: one function per paper-style figure; each takes plain arrays and returns a matplotlib Figure."""
from figures.context import fig_context_comparison
from figures.curves import fig_training_curves
from figures.feature_scale import fig_feature_scale
from figures.layers import fig_trf_vs_erf
from figures.methods import fig_methods
from figures.reach import fig_reach_comparison
from figures.replknet import fig_replknet_erf
from figures.segmentation import colorize_labels, fig_segmentation
from figures.unit_panels import UnitPanel, fig_unit_panels

__all__ = [
    "UnitPanel", "fig_unit_panels", "fig_trf_vs_erf", "fig_context_comparison", "fig_feature_scale",
    "fig_segmentation", "colorize_labels", "fig_methods", "fig_training_curves",
    "fig_reach_comparison", "fig_replknet_erf",
]
