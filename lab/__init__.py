"""lab: the application layer. It runs experiments and writes reports.

It loads checkpoints, datasets and run folders, runs probes and models, and
hands plain arrays to :mod:`figures`, then saves what they draw.

Layers only look down (``tests/test_layering.py`` checks every import):

=============  ==========================================  =====================================
package        may import (of ours)                        what it holds
=============  ==========================================  =====================================
``erf``        nothing                                     the instrument: RFs, probes, statistics
``parsenet``   ``erf``                                     the model family, data, training
``figures``    ``erf`` (plain helpers and types)           arrays -> matplotlib Figure / report text
``lab``        ``erf``, ``parsenet``, ``figures``          experiments, file I/O of runs, reports
``cli``        all of the above                            the ``erf-*`` commands
=============  ==========================================  =====================================

``figures`` opens no file and runs no model: it imports neither torch nor a
file-system module, and calls no ``open``/``savefig``/``read_*``/``write_*``.
"""
from lab.analysis import FEATURE_SCALE_LAYERS, feature_norms, predict
from lab.demo import check_demo, run_demo
from lab.experiment import MODELS, DemoConfig, probe_images, probe_settings, result_dir, run_experiment
from lab.render import FORMATS, find_inputs, make_figures, model_label, render, save_figures
from lab.report import build_report, write_report

__all__ = [
    "predict", "feature_norms", "FEATURE_SCALE_LAYERS",
    "DemoConfig", "MODELS", "check_demo", "run_demo", "run_experiment", "probe_images", "probe_settings",
    "result_dir",
    "FORMATS", "find_inputs", "model_label", "make_figures", "save_figures", "render",
    "build_report", "write_report",
]
