"""parsenet: ParseNet (Liu et al. 2015) and its FCN baseline."""
from parsenet.config import ParseNetConfig

__all__ = ["ParseNetConfig"]
