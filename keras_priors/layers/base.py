"""Rank-generic base for the structured convolutions.

`StructuredConv(rank, ...)` owns everything low-rank and root layers share: argument
checks, the optional 1x1 combination conv, bias, activation, output shapes, `get_config`,
the structural description (`conv_parts`) that `keras_priors.complexity` reads and the
decomposition into plain convolutions (`decompose`) that the exporters rebuild from.
Subclasses only say how the *spatial stage* is built and computed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import keras
from keras import ops

PACKAGE = "keras_priors"


@dataclass(frozen=True)
class ConvPart:
    """One convolution inside a structured layer, as the papers count it.

    `kernel_size` is the filter's spatial extent, `groups` the filter groups, and
    `output_positions` the number of spatial output positions (product of the output's
    spatial dims, `None` if unknown).
    """

    name: str
    kernel_size: tuple
    in_channels: int
    filters: int
    groups: int
    output_shape: tuple
    use_bias: bool

    @property
    def params(self) -> int:
        weights = math.prod(self.kernel_size) * (self.in_channels // self.groups) * self.filters
        return weights + (self.filters if self.use_bias else 0)

    @property
    def macs(self) -> int | None:
        positions = self.output_shape[:-1]
        if any(d is None for d in positions):
            return None
        per_position = math.prod(self.kernel_size) * (self.in_channels // self.groups)
        return math.prod(positions) * per_position * self.filters


@dataclass(frozen=True)
class ConvStep:
    """One plain convolution of a structured layer (see `StructuredConv.decompose`).

    It reads the input channels `input_channels = (start, stop)` (all when None), zero-pads
    (`padding` as per-axis `(before, after)` pairs; a negative amount crops) or uses the
    "same" / "valid" mode of a conv, then convolves with `kernel` (keras layout
    `(*kernel_size, in_channels // groups, filters)`) and adds `bias` (None: no bias).
    """

    name: str
    kernel: object
    bias: object
    strides: tuple
    padding: object
    dilation_rate: tuple
    groups: int = 1
    input_channels: tuple | None = None

    def __call__(self, x, data_format="channels_last"):
        """Run the step with `keras.ops` on a batch `x` (the reference semantics)."""
        rank = len(self.strides)
        axis0 = 1 if data_format == "channels_last" else 2
        if self.input_channels is not None:
            index = [slice(None)] * (rank + 2)
            index[-1 if data_format == "channels_last" else 1] = slice(*self.input_channels)
            x = x[tuple(index)]
        padding = self.padding
        if not isinstance(padding, str):
            if any(lo > 0 or hi > 0 for lo, hi in padding):
                width = [[0, 0] for _ in range(rank + 2)]
                for a, (lo, hi) in enumerate(padding):
                    width[axis0 + a] = [max(lo, 0), max(hi, 0)]
                x = ops.pad(x, width)
            if any(lo < 0 or hi < 0 for lo, hi in padding):
                index = [slice(None)] * (rank + 2)
                for a, (lo, hi) in enumerate(padding):
                    index[axis0 + a] = slice(max(-lo, 0), hi if hi < 0 else None)
                x = x[tuple(index)]
            padding = "valid"
        # the weights in x's dtype: under mixed precision a recomputing backward pass runs
        # outside the layer call, where Keras no longer casts variables itself
        kernel = ops.cast(self.kernel, x.dtype)
        y = _axis_conv_as_2d(x, kernel, self.strides, padding, data_format,
                             self.dilation_rate)
        if y is None:
            y = ops.conv(x, kernel, strides=self.strides, padding=padding,
                         data_format=data_format, dilation_rate=self.dilation_rate)
        if self.bias is None:
            return y
        shape = [1] * (rank + 2)
        shape[-1 if data_format == "channels_last" else 1] = self.bias.shape[0]
        return ops.add(y, ops.reshape(ops.cast(self.bias, x.dtype), shape))


def _axis_conv_as_2d(x, kernel, strides, padding, data_format, dilation_rate):
    """A 3D conv whose kernel spans one axis (k x 1 x 1, 1 x k x 1, 1 x 1 x k), run as a 2D
    conv on a reshaped view: the same numbers, and on TensorFlow's CPU kernels 1.1-1.7x
    faster than the 3D conv forward and backward (docs/performance.md). None where it does
    not apply (other kernels, strides, channels-first or unknown spatial sizes)."""
    spatial = tuple(x.shape[1:4]) if len(x.shape) == 5 else ()
    if (len(spatial) != 3 or data_format != "channels_last" or None in spatial
            or any(s != 1 for s in strides) or not isinstance(padding, str)):
        return None
    taps = [a for a in range(3) if kernel.shape[a] > 1]
    if len(taps) > 1 or x.shape[-1] != kernel.shape[3]:
        return None
    axis = taps[0] if taps else 2
    X, Y, Z = spatial
    c, f = kernel.shape[3], kernel.shape[4]
    k = kernel.shape[axis]
    if axis == 0:  # (B, X, Y*Z, C), kernel (k, 1)
        view, kernel2d, rate = (-1, X, Y * Z, c), (k, 1, c, f), (dilation_rate[0], 1)
    else:  # (B*X, Y, Z, C), kernel (k, 1) or (1, k)
        view = (-1, Y, Z, c)
        kernel2d = (k, 1, c, f) if axis == 1 else (1, k, c, f)
        rate = (dilation_rate[1], 1) if axis == 1 else (1, dilation_rate[2])
    y = ops.conv(ops.reshape(x, view), ops.reshape(kernel, kernel2d), strides=1,
                 padding=padding, data_format="channels_last", dilation_rate=rate)
    out = list(spatial)
    if padding == "valid":
        out[axis] -= dilation_rate[axis] * (k - 1)
    return ops.reshape(y, (-1, *out, f))


@dataclass(frozen=True)
class Decomposition:
    """A structured layer as plain convolutions: `steps` run in parallel on the layer input
    with their outputs concatenated on the channel axis (`sequential=False`), or one after
    another (`sequential=True`); then the optional 1x1 `combine` step, then `activation`.

    >>> import numpy as np
    >>> from keras_priors.layers import LowRankConv2D
    >>> layer = LowRankConv2D(8, 3, basis="lr_join", padding="same")
    >>> x = np.random.default_rng(0).normal(size=(1, 6, 6, 4)).astype("float32")
    >>> y = layer(x)
    >>> d = layer.decompose(x.shape)
    >>> [s.name for s in d.steps], d.sequential, d.combine.name
    (['basis0_3x1', 'basis1_1x3'], False, 'combine')
    >>> bool(np.allclose(d(x), y, atol=1e-6))
    True
    """

    steps: tuple
    sequential: bool
    combine: ConvStep | None
    activation: object
    data_format: str

    def spatial(self, x):
        """The steps without the combination and activation."""
        if self.sequential:
            for step in self.steps:
                x = step(x, self.data_format)
            return x
        outputs = [step(x, self.data_format) for step in self.steps]
        if len(outputs) == 1:
            return outputs[0]
        return ops.concatenate(outputs, axis=-1 if self.data_format == "channels_last" else 1)

    def __call__(self, x):
        y = self.spatial(x)
        if self.combine is not None:
            y = self.combine(y, self.data_format)
        return y if self.activation is None else self.activation(y)


# ---------------------------------------------------------------------------- checks
def positive_int(value, name):
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, received {name}={value!r}")
    return value


def int_tuple(value, rank, name):
    """`3` or `(3, 3)` -> `(3, 3)`, each entry a positive int."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value,) * rank
    try:
        value = tuple(value)
    except TypeError:
        raise ValueError(
            f"{name} must be an int or a tuple of {rank} ints, received {name}={value!r}"
        ) from None
    if len(value) != rank:
        raise ValueError(
            f"{name} must be an int or a tuple of {rank} ints, received {name}={value!r}"
        )
    for v in value:
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise ValueError(f"{name} entries must be positive integers, received {name}={value!r}")
    return value


def conv_output_length(length, extent, stride, padding):
    """Output length of a conv whose (dilated) kernel extent is `extent`."""
    if length is None:
        return None
    if padding == "same":
        return -(-length // stride)
    return (length - extent) // stride + 1


def same_padding(length, extent, stride):
    """TensorFlow SAME padding (before, after) for one axis; extra goes after."""
    out = -(-length // stride)
    total = max((out - 1) * stride + extent - length, 0)
    return total // 2, total - total // 2


# ------------------------------------------------------------------- initializer
@keras.saving.register_keras_serializable(package=PACKAGE)
class CompositeHeNormal(keras.initializers.Initializer):
    """Zero-mean Gaussian with std = sqrt(2 / fan), the low-rank paper's composite init.

    For a composite layer `fan = sum_g w_g * h_g * (d_g) * n_g`: the filter volume of each
    basis shape times its number of filters, summed over the basis. Structured layers
    compute `fan` themselves when their `kernel_initializer` is "composite_he_normal".

    >>> init = CompositeHeNormal(fan=3 * 32 + 3 * 32, seed=0)
    >>> tuple(init((3, 1, 16, 32)).shape)
    (3, 1, 16, 32)
    """

    def __init__(self, fan, seed=None):
        self.fan = positive_int(fan, "fan")
        self.seed = seed
        self._normal = keras.initializers.RandomNormal(stddev=math.sqrt(2.0 / fan), seed=seed)

    def __call__(self, shape, dtype=None):
        return self._normal(shape, dtype=dtype)

    def get_config(self):
        return {"fan": self.fan, "seed": self.seed}


COMPOSITE_HE = "composite_he_normal"


def _get_initializer(identifier, fan):
    if isinstance(identifier, str) and identifier == COMPOSITE_HE:
        return CompositeHeNormal(fan)
    return keras.initializers.get(identifier)


def _serialize(obj):
    return keras.saving.serialize_keras_object(obj) if obj is not None else None


def recompute_gradient(fn, x, terms=None, per_sample=False):
    """`fn(x)`, with a backward pass that recomputes `fn`'s intermediates from `x` instead
    of keeping them from the forward pass: only `x` is stored.

    `terms`, optional: functions of `x` whose outputs sum to `fn(x)` (the members of a
    composite and their slices of a linear combination). The backward pass then takes them
    one at a time, each waiting for the previous one's input gradient to be added to the
    running sum, so that at most one term's intermediates and input gradient exist at once
    instead of all of them until they are summed.

    `per_sample`: run the backward pass one sample of the batch at a time (`fn` must treat
    samples independently, as convolutions do), so that the recomputed intermediates and
    the partial input gradients exist for one sample at once: less peak memory, smaller
    kernels (docs/performance.md). TensorFlow only.

    On TensorFlow a custom gradient whose recomputation waits for the incoming gradient
    (a control dependency), so the graph executor cannot run it early and keep its results
    alive (`tf.recompute_grad` / `keras.remat` save little there); on the other backends
    `keras.remat`. Gradients equal those of `fn` itself.
    """
    if keras.backend.backend() != "tensorflow":
        return keras.remat(fn)(x)
    import tensorflow as tf

    def backward(x, dy, variables):
        """(dx, [dvar]) of `fn` at `x` for the incoming gradient `dy`."""
        dx, dvars, after = None, [None] * len(variables), dy
        for term in terms or [fn]:
            with tf.control_dependencies([after]):
                x_again = tf.identity(x)
            with tf.GradientTape() as tape:
                tape.watch(x_again)
                y_again = term(x_again)
            grads = tape.gradient(y_again, [x_again, *variables], output_gradients=dy)
            dx = grads[0] if dx is None else dx + grads[0]
            dvars = [a if b is None else b if a is None else a + b
                     for a, b in zip(dvars, grads[1:])]
            after = dx
        return dx, dvars

    @tf.custom_gradient
    def run(x):
        def grad(dy, variables=None):
            variables = list(variables or [])
            if not per_sample:
                return backward(x, dy, variables)

            def one(sample):
                dx, dvars = backward(sample[0][None], sample[1][None], variables)
                return dx[0], [tf.zeros_like(v) if d is None else tf.convert_to_tensor(d)
                               for d, v in zip(dvars, variables)]

            with tf.control_dependencies([dy]):
                x_after = tf.identity(x)
            signature = (tf.TensorSpec(x.shape[1:], x.dtype),
                         [tf.TensorSpec(v.shape, v.dtype) for v in variables])
            dx, dvars = tf.map_fn(one, (x_after, dy), parallel_iterations=1,
                                  fn_output_signature=signature)
            return dx, [tf.reduce_sum(d, 0) for d in dvars]

        return fn(x), grad

    return run(x)


_SOURCES = {"graph": None, "outputs": {}}


def mark_recomputable(y, fn, x):
    """Note, while a TensorFlow graph is traced, that `y = fn(x)` can be recomputed from
    `x`: a consumer whose backward pass needs `y` (`GroupNormalization`) then keeps `x`,
    which is stored anyway, and recomputes `y` instead of storing it. Eager tensors are
    never noted (nothing would free them)."""
    if keras.backend.backend() != "tensorflow":
        return
    import tensorflow as tf

    if tf.executing_eagerly() or not hasattr(y, "graph"):
        return
    if _SOURCES["graph"] is not y.graph:  # a new trace: forget the tensors of the last one
        _SOURCES.update(graph=y.graph, outputs={})
    _SOURCES["outputs"][y.ref()] = (fn, x)


def recompute_source(y):
    """`(fn, x)` if `y = fn(x)` was noted by `mark_recomputable` in this trace, else None."""
    if not hasattr(y, "ref") or getattr(y, "graph", None) is not _SOURCES["graph"]:
        return None
    return _SOURCES["outputs"].pop(y.ref(), None)


# --------------------------------------------------------------------------- base
class StructuredConv(keras.layers.Layer):
    """Base of the structured convolutions, generic in the spatial rank (1, 2 or 3).

    A structured layer is a *spatial stage* (defined by the subclass) optionally followed
    by an ungrouped 1x1 *combination* conv to `filters` outputs (`combine=True`), then
    the activation. Subclasses implement `_spatial_specs`, `_spatial_call` and
    `_spatial_width` and extend `get_config`.
    """

    def __init__(
        self,
        rank,
        filters,
        strides=1,
        padding="valid",
        data_format=None,
        dilation_rate=1,
        combine=False,
        activation=None,
        use_bias=True,
        kernel_initializer="he_normal",
        bias_initializer="zeros",
        kernel_regularizer=None,
        bias_regularizer=None,
        activity_regularizer=None,
        kernel_constraint=None,
        bias_constraint=None,
        **kwargs,
    ):
        super().__init__(activity_regularizer=activity_regularizer, **kwargs)
        self.rank = rank
        self.filters = positive_int(filters, "filters")
        self.strides = int_tuple(strides, rank, "strides")
        self.dilation_rate = int_tuple(dilation_rate, rank, "dilation_rate")
        if max(self.strides) > 1 and max(self.dilation_rate) > 1:
            raise ValueError(
                "strides > 1 cannot be combined with dilation_rate > 1, received "
                f"strides={self.strides}, dilation_rate={self.dilation_rate}"
            )
        padding = padding.lower() if isinstance(padding, str) else padding
        if padding not in ("valid", "same"):
            raise ValueError(f"padding must be 'valid' or 'same', received padding={padding!r}")
        self.padding = padding
        data_format = data_format or keras.config.image_data_format()
        if data_format not in ("channels_last", "channels_first"):
            raise ValueError(
                "data_format must be 'channels_last' or 'channels_first', received "
                f"data_format={data_format!r}"
            )
        self.data_format = data_format
        if not isinstance(combine, bool):
            raise ValueError(f"combine must be True or False, received combine={combine!r}")
        self.combine = combine
        self.activation = keras.activations.get(activation)
        self.use_bias = bool(use_bias)
        self.kernel_initializer = kernel_initializer
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
        self.bias_regularizer = keras.regularizers.get(bias_regularizer)
        self.kernel_constraint = keras.constraints.get(kernel_constraint)
        self.bias_constraint = keras.constraints.get(bias_constraint)
        self.input_spec = keras.layers.InputSpec(min_ndim=rank + 2)
        # Keras's own fan-in based init is the fallback if the user passes a custom one.
        if not (isinstance(kernel_initializer, str) and kernel_initializer == COMPOSITE_HE):
            keras.initializers.get(kernel_initializer)  # fail early on unknown names

    # ----------------------------------------------------------- layout helpers
    @property
    def channel_axis(self):
        return -1 if self.data_format == "channels_last" else 1

    def _spatial_shape(self, shape):
        shape = tuple(shape)
        return shape[1:-1] if self.data_format == "channels_last" else shape[2:]

    def _channels(self, shape):
        return shape[self.channel_axis]

    def _with_channels(self, batch, spatial, channels):
        if self.data_format == "channels_last":
            return (batch, *spatial, channels)
        return (batch, channels, *spatial)

    @property
    def kernel_extent(self):
        """Dilated spatial extent of the whole layer (its bounding kernel)."""
        return tuple(d * (k - 1) + 1 for k, d in zip(self.bounding_kernel_size, self.dilation_rate))

    # ---------------------------------------------------------- weight helpers
    def _add_kernel(self, name, shape, fan):
        return self.add_weight(
            name=name,
            shape=shape,
            initializer=_get_initializer(self.kernel_initializer, fan),
            regularizer=self.kernel_regularizer,
            constraint=self.kernel_constraint,
            trainable=True,
        )

    def _add_bias(self, name, size):
        if not self.use_bias:
            return None
        return self.add_weight(
            name=name,
            shape=(size,),
            initializer=self.bias_initializer,
            regularizer=self.bias_regularizer,
            constraint=self.bias_constraint,
            trainable=True,
        )

    def _combine_step(self, rows=None, bias=True):
        """The 1x1 combination as a ConvStep; `rows`, a slice of its input channels (one
        member's share, without the bias unless `bias`)."""
        ones = (1,) * self.rank
        kernel = self.combine_kernel
        if rows is not None:
            kernel = ops.convert_to_tensor(kernel)[..., rows, :]
        return ConvStep("combine", kernel, self.combine_bias if bias else None, ones,
                        "valid", ones)

    # ---------------------------------------------------------------- keras API
    def build(self, input_shape):
        in_channels = self._channels(input_shape)
        if in_channels is None:
            raise ValueError(
                f"{self.__class__.__name__} '{self.name}' needs a known number of input "
                f"channels, received input_shape={tuple(input_shape)}"
            )
        self.input_spec = keras.layers.InputSpec(
            ndim=self.rank + 2, axes={self.channel_axis: in_channels}
        )
        self._build_spatial(in_channels)
        width = self._spatial_width()
        if self.combine:
            self.combine_kernel = self._add_kernel(
                "combine_kernel", (1,) * self.rank + (width, self.filters), self.filters
            )
            self.combine_bias = self._add_bias("combine_bias", self.filters)
        elif width != self.filters:  # subclasses check this with a better message
            raise ValueError(f"spatial width {width} != filters={self.filters} without combine")

    def call(self, inputs):
        x = self._spatial_call(inputs)
        if self.combine:
            x = self._combine_step()(x, self.data_format)
        if self.activation is not None:
            x = self.activation(x)
        return x

    def compute_output_shape(self, input_shape):
        spatial = self._spatial_shape(input_shape)
        for n, e in zip(spatial, self.kernel_extent):
            if n is not None and self.padding == "valid" and n < e:
                raise ValueError(
                    f"{self.__class__.__name__} '{self.name}': input spatial shape "
                    f"{spatial} is smaller than the kernel extent {self.kernel_extent} "
                    "with padding='valid'"
                )
        out = tuple(
            conv_output_length(n, e, s, self.padding)
            for n, e, s in zip(spatial, self.kernel_extent, self.strides)
        )
        return self._with_channels(input_shape[0], out, self.filters)

    def conv_parts(self, input_shape):
        """The convolutions this layer runs on `input_shape`, as `ConvPart`s.

        Output shapes are channels-last `(*spatial, channels)` without the batch.
        """
        in_channels = self._channels(input_shape)
        spatial_out = self._spatial_shape(self.compute_output_shape(input_shape))
        parts = list(self._spatial_parts(in_channels, self._spatial_shape(input_shape), spatial_out))
        if self.combine:
            parts.append(
                ConvPart(
                    "combine",
                    (1,) * self.rank,
                    self._spatial_width(),
                    self.filters,
                    1,
                    (*spatial_out, self.filters),
                    self.use_bias,
                )
            )
        return parts

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "filters": self.filters,
                "strides": self.strides,
                "padding": self.padding,
                "data_format": self.data_format,
                "dilation_rate": self.dilation_rate,
                "combine": self.combine,
                "activation": keras.activations.serialize(self.activation),
                "use_bias": self.use_bias,
                "kernel_initializer": (
                    self.kernel_initializer
                    if isinstance(self.kernel_initializer, str)
                    else _serialize(keras.initializers.get(self.kernel_initializer))
                ),
                "bias_initializer": _serialize(self.bias_initializer),
                "kernel_regularizer": _serialize(self.kernel_regularizer),
                "bias_regularizer": _serialize(self.bias_regularizer),
                "activity_regularizer": _serialize(self.activity_regularizer),
                "kernel_constraint": _serialize(self.kernel_constraint),
                "bias_constraint": _serialize(self.bias_constraint),
            }
        )
        return config

    def decompose(self, input_shape=None, split_groups=False):
        """The plain convolutions this (built) layer computes on `input_shape`.

        Returns a `Decomposition` whose steps hold this layer's own weights; running it
        equals calling the layer. `input_shape` (with batch and channels) is needed only
        where padding depends on it (strides > 1 with padding="same"). With
        `split_groups=True` a grouped conv becomes one step per group, each reading its
        channel slice.
        """
        if not self.built:
            raise ValueError(f"{self.__class__.__name__} '{self.name}' must be built (called "
                             "on an input) before decompose()")
        spatial_in = ((None,) * self.rank if input_shape is None
                      else tuple(self._spatial_shape(input_shape)))
        steps, sequential = self._spatial_steps(spatial_in, split_groups)
        combine = self._combine_step() if self.combine else None
        return Decomposition(tuple(steps), sequential, combine, self.activation,
                             self.data_format)

    # --------------------------------------------------------- subclass hooks
    bounding_kernel_size: tuple

    def _build_spatial(self, in_channels):
        raise NotImplementedError

    def _spatial_width(self):
        raise NotImplementedError

    def _spatial_call(self, x):
        raise NotImplementedError

    def _spatial_parts(self, in_channels, spatial_in, spatial_out):
        raise NotImplementedError

    def _spatial_steps(self, spatial_in, split_groups):
        raise NotImplementedError
