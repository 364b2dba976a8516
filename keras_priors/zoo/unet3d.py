"""3D U-Nets for volumetric segmentation with a selectable conv type: full kxkxk, low-rank
(an axis-aligned kx1x1 || 1xkx1 || 1x1xk basis plus a 1x1x1 combination) or root (grouped
kxkxk plus a 1x1x1 combination). One builder; the variants are data.

Each level has two conv -> norm -> ReLU blocks; 2x max pooling down, nearest-neighbour
upsampling and concatenation with the skip up; a 1x1x1 conv gives one output channel per
class or region (sigmoid for BraTS regions WT/TC/ET, softmax for exclusive classes).

The norm is instance normalisation: `keras_priors.layers.GroupNormalization(groups=-1)`,
Keras' layer with a faster and leaner path for one group per channel (same weights). In
training, the low-rank U-Net's composites recompute their cheap member convs in the
backward pass (`recompute=True`, the default) and the norm after each of them recomputes
its input from the composite's input, so each low-rank conv -> norm -> ReLU unit keeps
only its input; `recompute="per_sample"` runs the composites' backward pass one sample
of the batch at a time, for a lower peak and a slower step. The memory and time each buys
are in docs/performance.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import keras
import numpy as np

from ..layers import GroupNormalization, LowRankConv3D, RootConv3D
from .common import check_width
from .registry import ModelSpec, register

CONV_TYPES = ("full", "lowrank", "root")


@dataclass(frozen=True)
class UNet3DConfig:
    conv: str = "full"
    widths: tuple = (16, 32, 64, 128)
    groups: int = 4  # root only
    basis: str = "lr_join"  # lowrank only
    norm: str = "instance"  # "instance" (no batch statistics: right for batches of 1-2) or "batch"
    # lowrank only: True keeps each conv -> norm unit's input only in training;
    # "per_sample" also runs the composites' backward pass one sample at a time (less
    # memory, slower step); False stores everything (fastest)
    recompute: bool | str = True


def _conv(x, filters, cfg, name, first):
    if cfg.conv == "full" or first:  # the first conv sees the raw modalities: keep it full
        return keras.layers.Conv3D(filters, 3, padding="same", use_bias=False, name=name)(x)
    if cfg.conv == "lowrank":
        return LowRankConv3D(filters, 3, basis=cfg.basis, padding="same", use_bias=False,
                             recompute=cfg.recompute, name=name)(x)
    if cfg.conv == "root":  # level_widths made every width (and so every input) divisible
        return RootConv3D(filters, 3, groups=cfg.groups, combine=True, padding="same",
                          use_bias=False, name=name)(x)
    raise ValueError(f"conv must be one of {CONV_TYPES}, received conv={cfg.conv!r}")


def _norm(x, cfg, name):
    if cfg.norm == "batch":
        return keras.layers.BatchNormalization(name=name)(x)
    if cfg.norm == "instance":
        return GroupNormalization(groups=-1, name=name)(x)
    raise ValueError(f"norm must be 'batch' or 'instance', received norm={cfg.norm!r}")


def _block(x, filters, cfg, name, first=False):
    for i in (1, 2):
        x = _conv(x, filters, cfg, f"{name}_conv{i}", first and i == 1)
        x = keras.layers.ReLU(name=f"{name}_relu{i}")(_norm(x, cfg, f"{name}_norm{i}"))
    return x


def level_widths(cfg: UNet3DConfig, width=1.0):
    """The filters of each level: `cfg.widths` as given when `width` is 1; otherwise each
    scaled by `width` and rounded to the nearest multiple of `cfg.groups` (at least
    `cfg.groups`), so that all conv types of one width multiplier have the same channels.
    A root U-Net's widths must be divisible by its groups (an error names the width).

    >>> level_widths(UNet3DConfig("root", widths=(16, 32)), width=1 / 3)
    [4, 12]
    >>> level_widths(UNet3DConfig("full", widths=(6, 12)))
    [6, 12]
    """
    width = check_width(width)
    if cfg.conv not in CONV_TYPES:
        raise ValueError(f"conv must be one of {CONV_TYPES}, received conv={cfg.conv!r}")
    if (isinstance(cfg.groups, bool) or not isinstance(cfg.groups, int) or cfg.groups < 1):
        raise ValueError(f"groups must be a positive integer, received groups={cfg.groups!r}")
    if not cfg.widths or any(isinstance(w, bool) or not isinstance(w, (int, np.integer)) or w < 1
                             for w in cfg.widths):
        raise ValueError(f"widths must be positive integers, one per level, received "
                         f"widths={tuple(cfg.widths)!r}")
    if width != 1:
        return [max(cfg.groups, int(round(w * width / cfg.groups)) * cfg.groups)
                for w in cfg.widths]
    if cfg.conv == "root":
        bad = [int(w) for w in cfg.widths if w % cfg.groups]
        if bad:
            raise ValueError(f"widths={tuple(int(w) for w in cfg.widths)}: width {bad[0]} is not "
                             f"divisible by groups={cfg.groups} (root convs split every level's "
                             "filters into groups)")
    return [int(w) for w in cfg.widths]


def build_unet3d(cfg: UNet3DConfig = UNet3DConfig(), input_shape=(64, 64, 64, 4), classes=3,
                 activation="sigmoid", name="unet3d", width=1.0):
    """A 3D U-Net; spatial input sizes must be divisible by 2**(levels-1); the filters of
    each level are `level_widths(cfg, width)`.

    >>> build_unet3d(UNet3DConfig("lowrank", widths=(8, 16)), (16, 16, 16, 4)).output_shape
    (None, 16, 16, 16, 3)
    """
    if cfg.norm not in ("instance", "batch"):
        raise ValueError(f"norm must be 'batch' or 'instance', received norm={cfg.norm!r}")
    if len(input_shape) != 4:
        raise ValueError(f"input_shape must be (X, Y, Z, channels), received {input_shape!r}")
    factor = 2 ** (len(cfg.widths) - 1)
    for d in input_shape[:3]:
        if d is not None and d % factor:
            raise ValueError(
                f"input_shape={tuple(input_shape)}: spatial sizes must be divisible by {factor} "
                f"for {len(cfg.widths)} levels")
    widths = level_widths(cfg, width)
    inputs = keras.Input(tuple(input_shape), name="input")
    skips, x = [], inputs
    for level, w in enumerate(widths):
        if level:
            x = keras.layers.MaxPooling3D(2, name=f"down{level}")(x)
        x = _block(x, w, cfg, f"enc{level}", first=level == 0)
        skips.append(x)
    for level in range(len(widths) - 2, -1, -1):
        x = keras.layers.UpSampling3D(2, name=f"up{level}")(x)
        x = keras.layers.Concatenate(name=f"skip{level}")([x, skips[level]])
        x = _block(x, widths[level], cfg, f"dec{level}")
    x = keras.layers.Conv3D(classes, 1, activation=activation, name="predictions",
                            dtype="float32" if keras.mixed_precision.global_policy().name != "float32"
                            else None)(x)
    return keras.Model(inputs, x, name=name)


VARIANTS = {
    "unet3d": UNet3DConfig("full"),
    "unet3d_lowrank": UNet3DConfig("lowrank"),
    "unet3d_root": UNet3DConfig("root"),
}


def _builder(cfg):
    def build(include_top, input_shape, classes, pooling, classifier_activation, name,
              width=1.0, widths=None, norm=None, recompute=None):
        if not include_top or pooling is not None:
            raise ValueError("a U-Net has no classifier head to drop: use include_top=True")
        c = UNet3DConfig(cfg.conv, tuple(widths) if widths else cfg.widths, cfg.groups,
                         cfg.basis, norm or cfg.norm,
                         cfg.recompute if recompute is None else recompute)
        return build_unet3d(c, input_shape or (64, 64, 64, 4), classes, classifier_activation,
                            name, width)
    return build


for _name, _cfg in VARIANTS.items():
    register(ModelSpec(
        _name, family="unet3d", builder=_builder(_cfg), input_shape=(64, 64, 64, 4), classes=3,
        preprocessing="zscore", min_input=16, default_activation="sigmoid",
        description=f"3D U-Net, widths {'/'.join(map(str, _cfg.widths))}, {_cfg.conv} convs"
        + (" (axis-aligned basis + 1x1x1)" if _cfg.conv == "lowrank" else "")
        + (f" ({_cfg.groups} groups + 1x1x1)" if _cfg.conv == "root" else ""),
    ))
