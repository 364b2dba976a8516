"""Root modules: grouped convolutions (Ioannou et al., "Deep Roots", CVPR 2017).

`filters` filters in `groups` groups: each filter sees `in_channels / groups` input
channels, which equals a full conv with a block-diagonal kernel. Optionally followed by
an ungrouped 1x1 that learns the combination (`combine=True`).

Every implementation reads the same kernel variable, laid out as keras' own grouped conv
(`(*kernel_size, in_channels // groups, filters)`), so switching `implementation` never
changes results:
- "grouped": one conv with groups (what Keras' `Conv2D(groups=g)` runs);
- "split": split the channels, one conv per group, concatenate;
- "auto": pick per layer what is faster on the running backend and device
  (`choose_implementation`).
"""

from __future__ import annotations

import functools
import math

import keras
from keras import ops

from .base import PACKAGE, ConvPart, StructuredConv, int_tuple, positive_int

IMPLEMENTATIONS = ("auto", "grouped", "split")


@functools.cache
def _has_accelerator():
    try:
        devices = keras.distribution.list_devices()
    except Exception:  # a backend without device listing counts as CPU
        return False
    return any(not d.lower().startswith("cpu") for d in devices)


def choose_implementation(groups, backend=None, accelerator=None):
    """The implementation "auto" runs for a layer with `groups` groups.

    Measured (benchmarks/layers.py, docs/layers.md): on CPU with TensorFlow, Keras runs a
    grouped conv through an XLA path that is 1.2-6x slower than split + concat for every
    g >= 2; XLA's CPU grouped conv (JAX) behaves the same. On GPUs, cuDNN's grouped conv
    is the fast path, and torch's CPU kernels handle groups natively.
    """
    if groups == 1:
        return "grouped"
    backend = backend or keras.backend.backend()
    accelerator = _has_accelerator() if accelerator is None else accelerator
    if accelerator or backend == "torch":
        return "grouped"
    return "split"


class RootConv(StructuredConv):
    """Rank-generic grouped (root) convolution; use RootConv2D / RootConv3D.

    Args:
        filters: output channels of the layer.
        kernel_size: spatial size of each filter.
        groups: number of filter groups; `filters` (or `spatial_filters`) and the input
            channels must be divisible by it.
        combine: follow the grouped conv by an ungrouped 1x1 conv to `filters`.
        spatial_filters: width of the grouped conv when `combine=True` (default `filters`).
        implementation: "auto", "grouped" or "split" (same weights, same results).
        Other arguments as in keras Conv layers; default init is He normal (fan-in).
    """

    def __init__(
        self,
        rank,
        filters,
        kernel_size,
        groups=1,
        strides=1,
        padding="valid",
        combine=False,
        spatial_filters=None,
        implementation="auto",
        kernel_initializer="he_normal",
        **kwargs,
    ):
        super().__init__(
            rank,
            filters,
            strides=strides,
            padding=padding,
            combine=combine,
            kernel_initializer=kernel_initializer,
            **kwargs,
        )
        self.kernel_size = int_tuple(kernel_size, rank, "kernel_size")
        self.bounding_kernel_size = self.kernel_size
        self.groups = positive_int(groups, "groups")
        if spatial_filters is not None:
            positive_int(spatial_filters, "spatial_filters")
            if not combine and spatial_filters != filters:
                raise ValueError(
                    f"spatial_filters={spatial_filters} differs from filters={filters} but "
                    "combine=False; set combine=True to map it to filters with a 1x1 conv"
                )
        self.spatial_filters = spatial_filters
        width_name = "filters" if spatial_filters is None else "spatial_filters"
        if self._spatial_width() % self.groups:
            raise ValueError(
                f"{width_name}={self._spatial_width()} is not divisible by groups={self.groups}"
            )
        if implementation not in IMPLEMENTATIONS:
            raise ValueError(
                f"implementation must be one of {IMPLEMENTATIONS}, received "
                f"implementation={implementation!r}"
            )
        self.implementation = implementation

    def _spatial_width(self):
        return self.spatial_filters or self.filters

    def _build_spatial(self, in_channels):
        if in_channels % self.groups:
            raise ValueError(
                f"input channels={in_channels} of layer '{self.name}' are not divisible by "
                f"groups={self.groups}"
            )
        width = self._spatial_width()
        fan = math.prod(self.kernel_size) * width
        self.kernel = self._add_kernel(
            "kernel", (*self.kernel_size, in_channels // self.groups, width), fan
        )
        self.bias = self._add_bias("bias", width)

    @property
    def resolved_implementation(self):
        """What this layer runs: "grouped" or "split"."""
        if self.implementation == "auto":
            return choose_implementation(self.groups)
        return self.implementation

    def _spatial_call(self, x):
        if self.groups == 1 or self.resolved_implementation == "grouped":
            y = self._conv(x, self.kernel)
        else:
            fg = self._spatial_width() // self.groups
            pieces = ops.split(x, self.groups, axis=self.channel_axis)
            y = ops.concatenate(
                [
                    self._conv(piece, self.kernel[..., g * fg : (g + 1) * fg])
                    for g, piece in enumerate(pieces)
                ],
                axis=self.channel_axis,
            )
        return self._bias_add(y, self.bias)

    def _spatial_parts(self, in_channels, spatial_in, spatial_out):
        width = self._spatial_width()
        return [
            ConvPart(
                "root", self.kernel_size, in_channels, width, self.groups,
                (*spatial_out, width), self.use_bias,
            )
        ]

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "kernel_size": self.kernel_size,
                "groups": self.groups,
                "spatial_filters": self.spatial_filters,
                "implementation": self.implementation,
            }
        )
        return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class RootConv2D(RootConv):
    """2D root module: a grouped conv, optionally followed by a 1x1 combination.

    >>> import numpy as np
    >>> layer = RootConv2D(64, 3, groups=8, padding="same", activation="relu")
    >>> layer(np.zeros((1, 28, 28, 32), "float32")).shape
    (1, 28, 28, 64)
    """

    def __init__(self, filters, kernel_size, groups=1, **kwargs):
        super().__init__(2, filters, kernel_size, groups, **kwargs)


@keras.saving.register_keras_serializable(package=PACKAGE)
class RootConv3D(RootConv):
    """3D root module: a grouped conv, optionally followed by a 1x1x1 combination.

    >>> import numpy as np
    >>> layer = RootConv3D(16, 3, groups=4, padding="same")
    >>> layer(np.zeros((1, 8, 8, 8, 8), "float32")).shape
    (1, 8, 8, 8, 16)
    """

    def __init__(self, filters, kernel_size, groups=1, **kwargs):
        super().__init__(3, filters, kernel_size, groups, **kwargs)
