"""Keras 3 layers -> built-in tf_keras layers with the same weights (one converter per
class); structured layers are rebuilt from their `decompose()` steps."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import keras
import numpy as np

from ...layers import LowRankConv2D, RootConv2D


def tf_keras():
    import tf_keras

    return tf_keras


def tfmot():
    import tensorflow_model_optimization as tfmot

    return tfmot


# ------------------------------------------------------------------ helpers
def _np(variable):
    return np.asarray(keras.ops.convert_to_numpy(variable))


def _activation_name(fn):
    name = keras.activations.serialize(fn) if fn is not None else "linear"
    if not isinstance(name, str):
        raise ValueError(f"activation {fn!r} has no tf_keras counterpart (only built-in names)")
    return name


def _channels_last(layer):
    fmt = getattr(layer, "data_format", "channels_last")
    if fmt != "channels_last":
        raise ValueError(
            f"layer '{layer.name}' ({type(layer).__name__}) has data_format={fmt!r}; the tfmot "
            "bridge supports channels_last only (what TFLite runs)"
        )


def _set(tfk_layer, weights, source):
    have = [tuple(w.shape) for w in tfk_layer.get_weights()]
    want = [tuple(np.shape(w)) for w in weights]
    if have != want:
        raise ValueError(
            f"weights of '{source}' do not fit tf_keras layer '{tfk_layer.name}': "
            f"{want} vs {have}"
        )
    tfk_layer.set_weights(weights)


@dataclass
class _Context:
    """State of one conversion: Keras tensors -> tf_keras tensors, and branch lists."""

    tensors: dict = field(default_factory=dict)
    # id(Keras tensor) -> (list of tf_keras branch tensors, their widths) for outputs that
    # are a plain concatenation of parallel convs (a BN after them is split per branch)
    branches: dict = field(default_factory=dict)
    shared: dict = field(default_factory=dict)  # id(layer) -> tf_keras layer (shared layers)
    root: str = "split"


# -------------------------------------------------------- one-to-one layers
def _standard(make, weights=True):
    """A converter that builds one tf_keras layer (`make(layer, L)`) and copies weights."""

    def convert(layer, inputs, ctx, call):
        L = tf_keras().layers
        tfk_layer = ctx.shared.get(id(layer))
        if tfk_layer is None:
            tfk_layer = make(layer, L)
            ctx.shared[id(layer)] = tfk_layer
            out = tfk_layer(inputs)
            if weights:
                _set(tfk_layer, [_np(w) for w in layer.weights], layer.name)
            return out
        return tfk_layer(inputs)

    return convert


def _conv2d(layer, L):
    _channels_last(layer)
    return L.Conv2D(layer.filters, layer.kernel_size, strides=layer.strides,
                    padding=layer.padding, dilation_rate=layer.dilation_rate,
                    groups=layer.groups, activation=_activation_name(layer.activation),
                    use_bias=layer.use_bias, name=layer.name)


def _depthwise(layer, L):
    _channels_last(layer)
    return L.DepthwiseConv2D(layer.kernel_size, strides=layer.strides, padding=layer.padding,
                             depth_multiplier=layer.depth_multiplier,
                             dilation_rate=layer.dilation_rate,
                             activation=_activation_name(layer.activation),
                             use_bias=layer.use_bias, name=layer.name)


def _dense(layer, L):
    return L.Dense(layer.units, activation=_activation_name(layer.activation),
                   use_bias=layer.use_bias, name=layer.name)


def _bn_layer(layer, L, name=None):
    axis = layer.axis if isinstance(layer.axis, int) else layer.axis[0]
    if axis not in (-1, 3):
        raise ValueError(
            f"BatchNormalization '{layer.name}' normalises axis={layer.axis}; the tfmot bridge "
            "supports the channels-last axis only"
        )
    return L.BatchNormalization(axis=-1, momentum=layer.momentum, epsilon=layer.epsilon,
                                center=layer.center, scale=layer.scale,
                                name=name or layer.name)


def _pool(cls_name):
    def make(layer, L):
        _channels_last(layer)
        return getattr(L, cls_name)(layer.pool_size, strides=layer.strides,
                                    padding=layer.padding, name=layer.name)
    return make


def _global_pool(cls_name):
    def make(layer, L):
        _channels_last(layer)
        return getattr(L, cls_name)(keepdims=layer.keepdims, name=layer.name)
    return make


def _relu(layer, L):
    return L.ReLU(max_value=layer.max_value, negative_slope=layer.negative_slope,
                  threshold=layer.threshold, name=layer.name)


def _activation(layer, L):
    return L.Activation(_activation_name(layer.activation), name=layer.name)


def _leaky(layer, L):
    return L.LeakyReLU(alpha=layer.negative_slope, name=layer.name)


def _softmax(layer, L):
    return L.Softmax(axis=layer.axis, name=layer.name)


def _concat(layer, L):
    return L.Concatenate(axis=layer.axis, name=layer.name)


def _named(cls_name):
    return lambda layer, L: getattr(L, cls_name)(name=layer.name)


def _dropout(layer, L):
    return L.Dropout(layer.rate, noise_shape=layer.noise_shape, seed=layer.seed, name=layer.name)


def _spatial_dropout(layer, L):
    return L.SpatialDropout2D(layer.rate, name=layer.name)


def _flatten(layer, L):
    _channels_last(layer)
    return L.Flatten(name=layer.name)


def _reshape(layer, L):
    return L.Reshape(layer.target_shape, name=layer.name)


def _rescaling(layer, L):
    return L.Rescaling(layer.scale, layer.offset, name=layer.name)


def _zero_pad(layer, L):
    _channels_last(layer)
    return L.ZeroPadding2D(layer.padding, name=layer.name)


def _crop(layer, L):
    _channels_last(layer)
    return L.Cropping2D(layer.cropping, name=layer.name)


# --------------------------------------------------------- structured layers
def _conv_step(L, x, name, step, activation):
    """One `ConvStep` of a decomposed layer: channel slice, pad / crop, then a Conv2D."""
    if step.input_channels is not None:
        x = channel_slice_class()(*step.input_channels, name=f"{name}_input")(x)
    padding = step.padding
    if not isinstance(padding, str):
        if any(lo > 0 or hi > 0 for lo, hi in padding):
            x = L.ZeroPadding2D(tuple((max(lo, 0), max(hi, 0)) for lo, hi in padding),
                                name=f"{name}_pad")(x)
        if any(lo < 0 or hi < 0 for lo, hi in padding):
            x = L.Cropping2D(tuple((max(-lo, 0), max(-hi, 0)) for lo, hi in padding),
                             name=f"{name}_crop")(x)
        padding = "valid"
    kernel = _np(step.kernel)
    conv = L.Conv2D(kernel.shape[-1], kernel.shape[:2], strides=step.strides, padding=padding,
                    dilation_rate=step.dilation_rate, groups=step.groups,
                    activation=activation, use_bias=step.bias is not None, name=name)
    y = conv(x)
    _set(conv, [kernel] + ([] if step.bias is None else [_np(step.bias)]), name)
    return y


def _structured(layer, x, ctx, call):
    """LowRankConv2D / RootConv2D from `layer.decompose()`: the steps (parallel branches are
    concatenated, and remembered so a following BN can be split per branch), then the 1x1
    combination; the activation is fused into the last conv (elementwise, so exact)."""
    _channels_last(layer)
    L = tf_keras().layers
    act = _activation_name(layer.activation)
    inner_act = "linear" if layer.combine else act
    grouped = isinstance(layer, RootConv2D) and ctx.root == "grouped"
    dec = layer.decompose(call.inputs[0].shape, split_groups=not grouped)
    if isinstance(layer, RootConv2D) and len(dec.steps) == 1:
        names = [layer.name if not layer.combine else f"{layer.name}_grouped"]
    else:
        names = [f"{layer.name}_{step.name}" for step in dec.steps]
    if dec.sequential:
        y = x
        for i, (name, step) in enumerate(zip(names, dec.steps)):
            y = _conv_step(L, y, name, step, inner_act if i == len(names) - 1 else "linear")
    else:
        branches = [_conv_step(L, x, name, step, inner_act) for name, step in zip(names, dec.steps)]
        y = branches[0] if len(branches) == 1 else L.Concatenate(
            axis=-1, name=f"{layer.name}_concat")(branches)
        if len(branches) > 1 and inner_act == "linear" and not layer.combine:
            ctx.branches[id(call.outputs[0])] = (branches,
                                                 [int(b.shape[-1]) for b in branches])
    if dec.combine is not None:
        y = _conv_step(L, y, f"{layer.name}_combine", dec.combine, act)
    return y


@functools.cache
def channel_slice_class():
    """A tf_keras layer taking channels [start, stop) (the input of one root group)."""
    import tensorflow as tf

    class ChannelSlice(tf_keras().layers.Layer):
        def __init__(self, start, stop, **kwargs):
            super().__init__(**kwargs)
            self.start, self.stop = int(start), int(stop)

        @tf.autograph.experimental.do_not_convert  # plain slicing; autograph re-reads source
        def call(self, inputs, *args, **kwargs):
            return inputs[..., self.start:self.stop]

        def compute_output_shape(self, input_shape):
            return (*input_shape[:-1], self.stop - self.start)

        def get_config(self):
            return {**super().get_config(), "start": self.start, "stop": self.stop}

    return ChannelSlice


def custom_objects():
    return {"ChannelSlice": channel_slice_class()}


def _batch_norm(layer, x, ctx, call):
    L = tf_keras().layers
    source = call.inputs[0]
    if id(source) not in ctx.branches:
        return _standard(_bn_layer)(layer, x, ctx, call)
    branch_outputs, widths = ctx.branches[id(source)]
    weights = [_np(w) for w in layer.weights]  # gamma?, beta?, moving mean, moving variance
    pieces, start = [], 0
    for i, (branch, width) in enumerate(zip(branch_outputs, widths)):
        bn = _bn_layer(layer, L, name=f"{layer.name}_{i}")
        pieces.append(bn(branch))
        _set(bn, [w[start:start + width] for w in weights], layer.name)
        start += width
    return L.Concatenate(axis=-1, name=f"{layer.name}_concat")(pieces)


K = keras.layers
_CONVERTERS = {
    K.Conv2D: _standard(_conv2d),
    K.DepthwiseConv2D: _standard(_depthwise),
    K.Dense: _standard(_dense),
    K.BatchNormalization: _batch_norm,
    K.ReLU: _standard(_relu, weights=False),
    K.Activation: _standard(_activation, weights=False),
    K.LeakyReLU: _standard(_leaky, weights=False),
    K.Softmax: _standard(_softmax, weights=False),
    K.MaxPooling2D: _standard(_pool("MaxPooling2D"), weights=False),
    K.AveragePooling2D: _standard(_pool("AveragePooling2D"), weights=False),
    K.GlobalAveragePooling2D: _standard(_global_pool("GlobalAveragePooling2D"), weights=False),
    K.GlobalMaxPooling2D: _standard(_global_pool("GlobalMaxPooling2D"), weights=False),
    K.Add: _standard(_named("Add"), weights=False),
    K.Multiply: _standard(_named("Multiply"), weights=False),
    K.Concatenate: _standard(_concat, weights=False),
    K.Dropout: _standard(_dropout, weights=False),
    K.SpatialDropout2D: _standard(_spatial_dropout, weights=False),
    K.Flatten: _standard(_flatten, weights=False),
    K.Reshape: _standard(_reshape, weights=False),
    K.Rescaling: _standard(_rescaling, weights=False),
    K.ZeroPadding2D: _standard(_zero_pad, weights=False),
    K.Cropping2D: _standard(_crop, weights=False),
    LowRankConv2D: _structured,
    RootConv2D: _structured,
}
del K

#: Keras 3 layer classes `to_tf_keras` converts (exact classes, not subclasses).
SUPPORTED = tuple(sorted(cls.__name__ for cls in _CONVERTERS))
