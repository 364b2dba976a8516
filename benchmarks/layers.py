"""Time one 3x3 conv layer, 256 -> 256 channels at 28x28, in every implementation.

For groups g in {1, 2, 4, 8, 16, 32, 64}: the root layer as one grouped conv, as split +
per-group convs + concat, and as "auto" picks; plus the low-rank bases, a plain keras
Conv2D as the baseline, forward and forward+backward, on the running backend (TF CPU
here). Prints a Markdown table and checks the targets: "auto" within 10% of the best
implementation at every g, and root layers with g >= 4 faster than the plain 3x3 conv.

    python benchmarks/layers.py            # full run (a few minutes on 2 cores)
    python benchmarks/layers.py --quick    # tiny smoke run
"""

from keras_priors.bench.layers import main

if __name__ == "__main__":
    main()
