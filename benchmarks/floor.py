"""Amdahl floor of each pair: the baseline with every spatial conv but the first as a 1x1.
Its time ratio is the best any structure of those convs can reach on this machine.

    python benchmarks/floor.py --size quick                # ~5 min on 2 cores
    python benchmarks/floor.py --size full --only unet3d   # one pair at full size

Same as `keras-priors bench floor ...`.
"""

import sys

from keras_priors.bench.floor import main

if __name__ == "__main__":
    sys.exit(main())
