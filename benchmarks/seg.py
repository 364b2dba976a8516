"""Segmentation at BraTS size (240x240x155, 1 mm): prepare time per case, peak memory,
loader patches/s and training steps/s for N = 4, 16, 40 cases at 64^3 and 128^3 patches.

    python benchmarks/seg.py --quick                              # smoke test, tiny sizes
    python benchmarks/seg.py --cases 4 16 40 --patch 64 128 --json seg.json

Same as `python -m keras_priors.bench.seg ...`.
"""

import sys

from keras_priors.bench.seg import main

if __name__ == "__main__":
    sys.exit(main())
