"""Root modules: grouped convolutions (Ioannou et al., "Deep Roots", CVPR 2017).

`filters` filters in `groups` groups: each filter sees `in_channels / groups` input
channels, which equals a full conv with a block-diagonal kernel. Optionally followed by
an ungrouped 1x1 that learns the combination (`combine=True`).

Every implementation reads the same kernel variable, laid out as keras' own grouped conv
(`(*kernel_size, in_channels // groups, filters)`), so switching `implementation` never
changes results:
- "grouped": one grouped conv. On TensorFlow it calls the backend's own grouped conv
  (oneDNN on CPU, cuDNN on GPU) when a one-time probe finds it works for this rank
  (`native_grouped_conv`); otherwise it runs what Keras' `Conv2D(groups=g)` runs (an XLA
  compiled conv on TensorFlow);
- "split": split the channels, one conv per group, concatenate;
- "auto": pick per layer what is faster on the running backend and device
  (`choose_implementation`).

`devices=["/GPU:0", "/GPU:1"]` places the per-group convs of the "split" implementation on
those devices round-robin (model parallelism over the filter groups; docs/scaling.md says
when that pays). It uses `tf.device`, so it acts on the TensorFlow backend only; on JAX
and torch the argument is kept (a saved model loads everywhere) but has no effect, since
there placement belongs to `keras.distribution` / the array's device, not to an op scope.
"""

from __future__ import annotations

import contextlib
import functools
import math
import re
import threading
import warnings

import keras
from keras import ops

from .base import PACKAGE, ConvPart, ConvStep, StructuredConv, int_tuple, positive_int

IMPLEMENTATIONS = ("auto", "grouped", "split")
_DEVICE = re.compile(r"^(/job:[\w-]+)?(/replica:\d+)?(/task:\d+)?"
                     r"/(device:)?(CPU|GPU|TPU)(:\d+)?$", re.IGNORECASE)


def check_devices(devices):
    """`None`, or a non-empty list of device strings such as "/GPU:0" or "/CPU:1"."""
    if devices is None:
        return None
    if isinstance(devices, str) or not isinstance(devices, (list, tuple)) or not devices:
        raise ValueError(
            "devices must be None or a non-empty list of device strings such as "
            f"['/GPU:0', '/GPU:1'], received devices={devices!r}")
    bad = [d for d in devices if not isinstance(d, str) or not _DEVICE.match(d)]
    if bad:
        raise ValueError(
            f"devices entries must be device strings such as '/GPU:0', '/CPU:1' or "
            f"'/job:worker/task:0/device:GPU:0', received {bad[0]!r} in devices={list(devices)!r}")
    return list(devices)


@functools.cache
def _has_accelerator():
    try:
        devices = keras.distribution.list_devices()
    except Exception:  # a backend without device listing counts as CPU
        return False
    return any(not d.lower().startswith("cpu") for d in devices)


@functools.cache
def native_grouped_conv(rank, dtype="float32"):
    """Whether TensorFlow runs a grouped `rank`-D conv and its gradient natively (without
    XLA) in `dtype` on the default device, checked once against split + concat on a tiny
    input.

    TF 2.21 with oneDNN does so for 2D float32 and bfloat16 on CPU; 3D, float64, or
    `TF_ENABLE_ONEDNN_OPTS=0` fail there, and the layer keeps its portable paths
    (docs/layers.md).
    """
    if keras.backend.backend() != "tensorflow":
        return False
    result = []  # a thread of its own: eager, untouched by a graph or tape of the caller's
    probe = threading.Thread(target=lambda: result.append(_grouped_conv_agrees(rank, dtype)))
    probe.start()
    probe.join()
    return bool(result and result[0])


def _grouped_conv_agrees(rank, dtype):
    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(size=(1, *(5,) * rank, 4)), dtype=dtype)
    k = tf.constant(rng.normal(size=(*(3,) * rank, 2, 4)), dtype=dtype)

    def with_gradients(conv):
        with tf.GradientTape() as tape:
            tape.watch([x, k])
            y = conv()
            loss = tf.reduce_sum(y * y)
        return [y, *tape.gradient(loss, [x, k])]

    def split():
        a, b = tf.split(x, 2, axis=-1)
        return tf.concat([tf.nn.convolution(a, k[..., :2], padding="SAME"),
                          tf.nn.convolution(b, k[..., 2:], padding="SAME")], -1)

    try:
        got = with_gradients(lambda: tf.nn.convolution(x, k, padding="SAME"))
    except (tf.errors.OpError, ValueError):
        return False
    want = with_gradients(split)
    tol = 1e-2 if dtype in ("float16", "bfloat16") else 1e-4
    return all(np.allclose(np.asarray(g, "float64"), np.asarray(w, "float64"), rtol=tol, atol=tol)
               for g, w in zip(got, want))


def _native_here(rank, dtype="float32"):
    """`native_grouped_conv(rank, dtype)` for the computation dtype of a layer."""
    return native_grouped_conv(rank, keras.backend.standardize_dtype(dtype))


def choose_implementation(groups, backend=None, accelerator=None, rank=2, dtype="float32"):
    """The implementation "auto" runs for a `rank`-D layer with `groups` groups.

    Measured (benchmarks/layers.py, docs/layers.md): on CPU with TensorFlow, the native
    grouped conv (oneDNN, 2D float32) is 2-10x faster than split + concat, and its gradient
    too; where TensorFlow has no native grouped conv (3D on CPU), Keras compiles one with XLA,
    which is slower than split + concat, and its gradient 5-100x slower. XLA's CPU grouped
    conv (JAX) behaves the same. On GPUs, cuDNN's grouped conv is the fast path, and torch's
    CPU kernels handle groups natively.
    """
    if groups == 1:
        return "grouped"
    backend = backend or keras.backend.backend()
    accelerator = _has_accelerator() if accelerator is None else accelerator
    if accelerator or backend == "torch":
        return "grouped"
    if backend == "tensorflow" and _native_here(rank, dtype):
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
        devices: optional list of device strings; the per-group convs of the "split"
            implementation run on them round-robin (TensorFlow backend; see module doc).
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
        devices=None,
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
        self.devices = check_devices(devices)
        if self.devices and implementation == "grouped" and self.groups > 1:
            raise ValueError(
                "devices places the per-group convs of implementation='split', but "
                "implementation='grouped' runs one conv; use implementation='split' or 'auto'")
        if self.devices and keras.backend.backend() != "tensorflow":
            warnings.warn(
                f"RootConv devices={self.devices} has no effect on the "
                f"{keras.backend.backend()} backend (device scopes are TensorFlow's); the "
                "layer computes the same result without placement", stacklevel=2)

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
            if self.devices and self.groups > 1:
                return "split"
            return choose_implementation(self.groups, rank=self.rank, dtype=self.compute_dtype)
        return self.implementation

    def _device(self, index):
        """The placement scope of group `index` (a no-op without devices or off TensorFlow)."""
        if not self.devices or keras.backend.backend() != "tensorflow":
            return contextlib.nullcontext()
        import tensorflow as tf

        return tf.device(self.devices[index % len(self.devices)])

    def _spatial_call(self, x):
        steps, _ = self._spatial_steps(None, split_groups=self.groups > 1 and
                                       self.resolved_implementation == "split")
        if len(steps) > 1:  # one conv per group, each on its channel slice
            outputs = []
            for g, step in enumerate(steps):
                with self._device(g):
                    outputs.append(step(x, self.data_format))
            return ops.concatenate(outputs, axis=self.channel_axis)
        with self._device(0):
            if (self.groups == 1 or keras.backend.backend() != "tensorflow"
                    or self.data_format != "channels_last"
                    or not _native_here(self.rank, x.dtype)):
                return steps[0](x, self.data_format)
            import tensorflow as tf  # TensorFlow's own grouped conv (oneDNN / cuDNN)

            y = tf.nn.convolution(x, self.kernel, strides=self.strides,
                                  padding=self.padding.upper(), dilations=self.dilation_rate)
            return y if self.bias is None else ops.add(y, self.bias)

    def _spatial_steps(self, spatial_in, split_groups=False):
        conv = dict(strides=self.strides, padding=self.padding, dilation_rate=self.dilation_rate)
        if self.groups == 1 or not split_groups:
            return [ConvStep("root", self.kernel, self.bias, groups=self.groups, **conv)], False
        fg, cg = self._spatial_width() // self.groups, self.kernel.shape[-2]
        return [
            ConvStep(f"group{g}", self.kernel[..., g * fg:(g + 1) * fg],
                     None if self.bias is None else self.bias[g * fg:(g + 1) * fg],
                     input_channels=(g * cg, (g + 1) * cg), **conv)
            for g in range(self.groups)
        ], False

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
                "devices": self.devices,
            }
        )
        return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class RootConv2D(RootConv):
    """2D root module: a grouped conv, optionally followed by a 1x1 combination.

    >>> import numpy as np
    >>> layer = RootConv2D(64, 3, groups=8, padding="same", activation="relu")
    >>> tuple(layer(np.zeros((1, 28, 28, 32), "float32")).shape)
    (1, 28, 28, 64)
    """

    def __init__(self, filters, kernel_size, groups=1, **kwargs):
        super().__init__(2, filters, kernel_size, groups, **kwargs)


@keras.saving.register_keras_serializable(package=PACKAGE)
class RootConv3D(RootConv):
    """3D root module: a grouped conv, optionally followed by a 1x1x1 combination.

    >>> import numpy as np
    >>> layer = RootConv3D(16, 3, groups=4, padding="same")
    >>> tuple(layer(np.zeros((1, 8, 8, 8, 8), "float32")).shape)
    (1, 8, 8, 8, 16)
    """

    def __init__(self, filters, kernel_size, groups=1, **kwargs):
        super().__init__(3, filters, kernel_size, groups, **kwargs)
