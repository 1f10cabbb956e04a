"""erf: theoretical and empirical receptive fields of CNN neurons."""
from erf.graph import layer_names, resolve_layer, truncate

__all__ = ["layer_names", "resolve_layer", "truncate"]
