"""Structured vs baseline models, side by side: MACs, params, Keras TF-CPU inference (batch 1
and 32) and training step, TFLite fp32 / int8 with XNNPACK at 1 and 2 threads, peak training
memory, and the import cost. Prints Markdown tables with every target marked met or not.

    python benchmarks/models.py --json docs/performance.json         # full run (~10 min, 2 cores)
    python benchmarks/models.py --size quick                         # smaller inputs
    python benchmarks/models.py --size smoke                         # tiny smoke run (CI)
    python benchmarks/models.py --compare docs/performance.json      # ratios now vs saved

Same as `keras-priors bench models ...`.
"""

import sys

from keras_priors.bench.models import main

if __name__ == "__main__":
    sys.exit(main())
