"""cli: the erf-* commands, thin click layers over the library.

OpenMP threads that spin while waiting make PyTorch many times slower when
another process shares the cores (measured here: 30x for a training step on
2 busy cores); passive waiting keeps it robust. It must be set before torch
loads its OpenMP runtime, hence here, and only where the user has not chosen.
"""
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import parsenet  # noqa: E402,F401 - registers our checkpoints as model specs (erf.models.register_model_loader)
