"""Pieces every family builder shares: conv factory, input handling, classifier head."""

from __future__ import annotations

import keras

from ..layers import PRESETS, LowRankConv2D, RootConv2D


def check_width(width):
    """A width multiplier must be a positive number (0 or less used to give the narrowest
    net instead of an error).

    >>> check_width(0.5)
    0.5
    """
    if isinstance(width, bool) or not isinstance(width, (int, float)) or not width > 0:
        raise ValueError(f"width must be a positive multiplier such as 0.5, received "
                         f"width={width!r}")
    return float(width)


def make_input(input_shape, default, min_size):
    """A keras.Input of `input_shape` (default `default`), checked like keras.applications."""
    shape = tuple(default if input_shape is None else input_shape)
    if len(shape) != 3:
        raise ValueError(f"input_shape must be (height, width, channels), received {shape!r}")
    for d in shape[:2]:
        if d is not None and d < min_size:
            raise ValueError(
                f"input_shape={shape!r} is too small for this model: height and width must be "
                f">= {min_size}"
            )
    return keras.Input(shape, name="input")


def conv2d(x, filters, kernel_size, *, name, kind="full", groups=1, strides=1, use_bias=True,
           padding="same"):
    """One spatial conv of a family's `kind`: "full", a low-rank preset, or root groups.

    kind="full" with groups=1 is a plain keras Conv2D; groups > 1 gives a RootConv2D;
    any other kind is a LowRankConv2D basis preset ("lr", "lr_join", "sf", ...).
    """
    if kind == "full":
        if groups == 1:
            return keras.layers.Conv2D(
                filters, kernel_size, strides=strides, padding=padding, use_bias=use_bias,
                kernel_initializer="he_normal", name=name,
            )(x)
        return RootConv2D(
            filters, kernel_size, groups=groups, strides=strides, padding=padding,
            use_bias=use_bias, name=name,
        )(x)
    # A composite with a 1x1 combination stores its members' concatenation for the backward
    # pass; recomputing the members there instead brings vgg11_gmp_lr_join's training memory
    # from 1.40x to 0.95x vgg11_gmp's (docs/performance.md). Plain concatenations store
    # nothing extra: no recomputation.
    return LowRankConv2D(
        filters, kernel_size, basis=kind, strides=strides, padding=padding, use_bias=use_bias,
        recompute=kind in PRESETS[2] and PRESETS[2][kind].combine, name=name,
    )(x)


def classifier(x, include_top, classes, pooling, classifier_activation, global_pool="avg"):
    """keras.applications head: pooled features or a softmax Dense of `classes`."""
    if include_top:
        if global_pool == "avg":
            x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
        elif global_pool == "max":
            x = keras.layers.GlobalMaxPooling2D(name="max_pool")(x)
        return keras.layers.Dense(classes, activation=classifier_activation, name="predictions")(x)
    if pooling == "avg":
        return keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    if pooling == "max":
        return keras.layers.GlobalMaxPooling2D(name="max_pool")(x)
    if pooling is not None:
        raise ValueError(f"pooling must be None, 'avg' or 'max', received pooling={pooling!r}")
    return x
