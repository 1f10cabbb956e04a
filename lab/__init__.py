"""lab: the application layer. It runs experiments and writes reports.

It loads checkpoints, datasets and run folders, runs probes and models, and
hands plain arrays to :mod:`figures`. It may use :mod:`erf` and :mod:`parsenet`;
nothing below it imports it (torchvision keeps ``references/`` apart the same way).
Only :mod:`cli` sits above it.
"""

__all__: list[str] = []
