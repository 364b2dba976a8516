"""Ablations of the lean low-rank U-Net's training path: peak training memory and step
time at a P^3 x 4 patch, batch 2, widths 16-128, in a fresh process (the same measurement
as `keras-priors bench unet`).

    python benchmarks/unet_ablation.py unet3d_lowrank rec 96          # the zoo default
    python benchmarks/unet_ablation.py unet3d_lowrank rec_no2d 96     # axis members as 3D convs
    python benchmarks/unet_ablation.py unet3d_lowrank rec_nomark 96   # the norm keeps its input
    python benchmarks/unet_ablation.py unet3d_lowrank norec 96        # no recompute at all
    python benchmarks/unet_ablation.py unet3d full 96

The variant is a name holding any of: "norec", "no2d", "nomark".
"""

import sys

from keras_priors.bench.unet import measure


def main(model, variant, patch):
    recompute = False if "norec" in variant else None
    ablate = [part for part in ("no2d", "nomark") if part in variant]
    r = measure(model, recompute, "ours", patch, [16, 32, 64, 128], 2, ablate)
    print(f"| {model} | {variant} | {patch}^3 | {r['memory_mb']} MB | {r['step_s']:.3f} s |")


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
