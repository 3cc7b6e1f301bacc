"""The system a user drives: CLI, data, training, evaluators, search loop and run directories."""

import os

# numpy's OpenBLAS would start a thread per core for the small matrices we decompose (the predictor's
# activation statistics); beside torch threads and worker processes that oversubscribes the cores and made
# `nas bench upgrade` 1.7x slower here. Set before numpy loads; an explicit setting by the user wins.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
