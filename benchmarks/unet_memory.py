"""Training memory, step and inference time of the 3D U-Nets at 96^3 / 128^3 patches, a
fresh process per row.

    python benchmarks/unet_memory.py --patch 96 128 [--widths 16 32 64 128] [--json out.json]

Same as `keras-priors bench unet ...` (`python -m keras_priors.bench.unet ...`).
"""

import sys

from keras_priors.bench.unet import main

if __name__ == "__main__":
    sys.exit(main())
