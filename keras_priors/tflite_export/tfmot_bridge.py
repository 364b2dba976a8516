"""The tfmot bridge: quantization-aware training and magnitude pruning for zoo models.

tensorflow-model-optimization (tfmot) only accepts tf_keras (Keras 2) models, so the bridge
rebuilds a Keras 3 functional model in tf_keras with every structured layer written as
built-in tf_keras layers, copies the weights and checks that both models agree:

- `LowRankConv2D` (parallel basis): one `Conv2D` per member, each behind the
  `ZeroPadding2D` / `Cropping2D` that aligns it with the centre-embedded full kernel
  exactly as the layer's own call does, then `Concatenate`, then the optional 1x1
  combination `Conv2D`. The sequential ("sf") basis is a chain of `Conv2D`s.
- `RootConv2D`: by default (`root="split"`) a channel slice and a `Conv2D` per group, then
  `Concatenate` (STRIDED_SLICE + CONV_2D + CONCATENATION in TFLite); with
  `root="grouped"` one `Conv2D(groups=g)` (one grouped CONV_2D). Both pass tfmot's QAT
  and the full-int8 converter; tf_keras trains the grouped form through XLA, about 2x
  slower on CPU. Then the optional 1x1 combination.
- A `BatchNormalization` right after parallel branches (a low-rank basis without a
  combination, a split root layer) is split into one BN slice per branch before the
  `Concatenate`: tfmot has
  no quantization for a BN that does not follow a conv, and per-channel BN commutes with
  concatenation, so the result is exact.

Everything else maps one to one onto its tf_keras twin (see `SUPPORTED`).

Then: `quantize_aware` (tfmot `quantize_model`), `prune` (`prune_low_magnitude` with a
polynomial-decay or constant schedule), `fine_tune`, `strip`, `to_tflite_int8`
(full-integer TFLite: representative data, TFLITE_BUILTINS_INT8, int8 input and output)
and `evaluate_tflite` (accuracy in the LiteRT interpreter).

tf_keras, tfmot, TensorFlow's converter and ai_edge_litert are imported inside the
functions that need them, so importing this module costs no more than `import keras`.

>>> from keras_priors import zoo                                   # doctest: +SKIP
>>> from keras_priors.tflite_export import tfmot_bridge as tb      # doctest: +SKIP
>>> model = zoo.load("nin_root8", weights="fashion_mnist")         # doctest: +SKIP
>>> qat = tb.quantize_aware(model, calibration_data=x_train[:200]) # doctest: +SKIP
>>> tb.fine_tune(qat, (x_train, y_train), epochs=1, lr=1e-3)       # doctest: +SKIP
>>> blob = tb.to_tflite_int8(qat, x_train[:200])                   # doctest: +SKIP
>>> tb.evaluate_tflite(blob, x_test, y_test)                       # doctest: +SKIP
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np

from ..layers import LowRankConv2D, RootConv2D

__all__ = [
    "SUPPORTED",
    "calibrate_ranges",
    "evaluate_tflite",
    "fine_tune",
    "max_difference",
    "prune",
    "quantize_aware",
    "recalibrate_batch_norm",
    "sparsity",
    "strip",
    "save_tflite",
    "tflite_tensor_types",
    "to_tf_keras",
    "to_tflite_int8",
]


def _tfk():
    import tf_keras

    return tf_keras


def _tfmot():
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

    def convert(layer, inputs, ctx, node):
        L = _tfk().layers
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
def _member_conv(L, x, name, kernel, bias, **kwargs):
    conv = L.Conv2D(kernel.shape[-1], kernel.shape[:2], use_bias=bias is not None, name=name,
                    **kwargs)
    y = conv(x)
    _set(conv, [kernel] + ([] if bias is None else [bias]), name)
    return y


def _pad_crop(L, x, pads, name):
    """The tf_keras form of LowRankConv._pad_or_crop: pad the positives, crop the negatives."""
    if any(lo > 0 or hi > 0 for lo, hi in pads):
        x = L.ZeroPadding2D(tuple((max(lo, 0), max(hi, 0)) for lo, hi in pads),
                            name=f"{name}_pad")(x)
    if any(lo < 0 or hi < 0 for lo, hi in pads):
        x = L.Cropping2D(tuple((max(-lo, 0), max(-hi, 0)) for lo, hi in pads),
                         name=f"{name}_crop")(x)
    return x


def _combine(L, layer, x, act):
    y = _member_conv(L, x, f"{layer.name}_combine", _np(layer.combine_kernel),
                     None if layer.combine_bias is None else _np(layer.combine_bias),
                     activation=act)
    return y


def _parallel(L, layer, x, ctx, node, branches, act):
    """Concatenate parallel branch tensors; remember them so a following BN can be split."""
    y = branches[0] if len(branches) == 1 else L.Concatenate(
        axis=-1, name=f"{layer.name}_concat")(branches)
    if len(branches) > 1 and act == "linear" and not layer.combine:
        ctx.branches[id(node.output_tensors[0])] = (
            branches, [int(b.shape[-1]) for b in branches])
    return y


def _lowrank(layer, x, ctx, node):
    _channels_last(layer)
    L = _tfk().layers
    act = _activation_name(layer.activation)
    inner_act = "linear" if layer.combine else act  # elementwise: exact on each member
    kernels = [_np(k) for k in layer.basis_kernels]
    biases = [None if b is None else _np(b) for b in layer.basis_biases]
    tags = ["x".join(map(str, shape)) for shape, _ in layer.members]
    if layer.sequential:
        y = x
        stages = layer._stage_strides()
        for i, (kernel, bias, strides) in enumerate(zip(kernels, biases, stages)):
            final = i == len(kernels) - 1
            y = _member_conv(L, y, f"{layer.name}_basis{i}_{tags[i]}", kernel, bias,
                             strides=strides, padding=layer.padding,
                             dilation_rate=layer.dilation_rate,
                             activation=inner_act if final else "linear")
        return _combine(L, layer, y, act) if layer.combine else y
    spatial_in = tuple(node.input_tensors[0].shape[1:-1])
    outputs = []
    for i, ((shape, _), kernel, bias) in enumerate(zip(layer.members, kernels, biases)):
        name = f"{layer.name}_basis{i}_{tags[i]}"
        mode = layer._member_padding(shape, spatial_in)
        if isinstance(mode, str):
            xi, padding = x, mode
        else:
            xi, padding = _pad_crop(L, x, mode, name), "valid"
        outputs.append(_member_conv(L, xi, name, kernel, bias, strides=layer.strides,
                                    padding=padding, dilation_rate=layer.dilation_rate,
                                    activation=inner_act))
    y = _parallel(L, layer, x, ctx, node, outputs, inner_act)
    return _combine(L, layer, y, act) if layer.combine else y


@functools.cache
def _channel_slice_class():
    """A tf_keras layer taking channels [start, stop) (the input of one root group)."""
    import tensorflow as tf

    tfk = _tfk()

    class ChannelSlice(tfk.layers.Layer):
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


def _custom_objects():
    return {"ChannelSlice": _channel_slice_class()}


def _root(layer, x, ctx, node):
    _channels_last(layer)
    L = _tfk().layers
    act = _activation_name(layer.activation)
    inner_act = "linear" if layer.combine else act
    kernel = _np(layer.kernel)
    bias = None if layer.bias is None else _np(layer.bias)
    conv_args = dict(strides=layer.strides, padding=layer.padding,
                     dilation_rate=layer.dilation_rate, activation=inner_act)
    g = layer.groups
    if g == 1 or ctx.root == "grouped":
        y = _member_conv(L, x, layer.name if not layer.combine else f"{layer.name}_grouped",
                         kernel, bias, groups=g, **conv_args)
    else:
        slicer = _channel_slice_class()
        cin, fg = kernel.shape[-2], kernel.shape[-1] // g
        outputs = []
        for i in range(g):
            xi = slicer(i * cin, (i + 1) * cin, name=f"{layer.name}_group{i}_input")(x)
            outputs.append(_member_conv(
                L, xi, f"{layer.name}_group{i}", kernel[..., i * fg:(i + 1) * fg],
                None if bias is None else bias[i * fg:(i + 1) * fg], **conv_args))
        y = _parallel(L, layer, x, ctx, node, outputs, inner_act)
    return _combine(L, layer, y, act) if layer.combine else y


def _batch_norm(layer, x, ctx, node):
    L = _tfk().layers
    source = node.input_tensors[0]
    if id(source) not in ctx.branches:
        return _standard(_bn_layer)(layer, x, ctx, node)
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
    LowRankConv2D: _lowrank,
    RootConv2D: _root,
}
del K

#: Keras 3 layer classes `to_tf_keras` converts (exact classes, not subclasses).
SUPPORTED = tuple(sorted(cls.__name__ for cls in _CONVERTERS))


# ------------------------------------------------------------------- public
def _is_tf_keras(model):
    return type(model).__module__.startswith(("tf_keras", "tensorflow_model_optimization"))


def _random_inputs(model, batch, seed):
    rng = np.random.default_rng(seed)
    arrays = []
    for t in model.inputs:
        shape = tuple(t.shape[1:])
        if any(d is None for d in shape):
            raise ValueError(
                f"input '{t.name}' has shape {tuple(t.shape)}; checking the tf_keras model "
                "needs static shapes (pass check=False or build the model with input_shape)"
            )
        arrays.append(rng.standard_normal((batch, *shape)).astype("float32"))
    return arrays


def max_difference(model, tfk_model, batch=2, seed=0):
    """(largest absolute output difference, largest absolute output of `model`) of a Keras 3
    model and its tf_keras twin on the same random normal inputs."""
    inputs = _random_inputs(model, batch, seed)
    feed = inputs[0] if len(inputs) == 1 else inputs
    ours = [_np(a) for a in keras.tree.flatten(model(feed, training=False))]
    theirs = tfk_model(feed, training=False)
    theirs = theirs if isinstance(theirs, (list, tuple)) else [theirs]
    diff = max(float(np.max(np.abs(a - np.asarray(b)))) for a, b in zip(ours, theirs))
    return diff, max(float(np.max(np.abs(a))) for a in ours)


def to_tf_keras(model, root="split", check=True, atol=1e-5):
    """The tf_keras (Keras 2) twin of a Keras 3 functional `model`, with its weights.

    Structured layers become built-in tf_keras layers (see the module docstring); every
    other layer must be one of `SUPPORTED`, or a ValueError names it. `root` says how a
    RootConv2D is written: "split" (channel slices, one Conv2D per group, Concatenate) or
    "grouped" (one Conv2D(groups=g): one grouped CONV_2D in TFLite, but tf_keras trains it
    through XLA, about 2x slower on CPU). With `check=True` the two models run on random
    normal inputs and must agree within `atol` (scaled by the output's magnitude when that
    exceeds 1). The source model is not modified.
    """
    tfk = _tfk()
    if isinstance(model, keras.Sequential):
        model = model._functional if getattr(model, "_functional", None) else None
        if model is None:
            raise ValueError("the Sequential model is not built; call it on an input first")
    if not isinstance(model, keras.Model) or not hasattr(model, "_nodes_by_depth"):
        raise ValueError(
            f"to_tf_keras needs a Keras 3 functional model, received {type(model).__name__}"
        )
    if root not in ("split", "grouped"):
        raise ValueError(f"root must be 'split' or 'grouped', received root={root!r}")
    ctx = _Context(root=root)
    inputs = []
    for t in model.inputs:
        layer = t._keras_history[0]
        tin = tfk.Input(shape=tuple(t.shape[1:]), dtype=t.dtype, name=layer.name)
        ctx.tensors[id(t)] = tin
        inputs.append(tin)
    for depth in sorted(model._nodes_by_depth, reverse=True):
        for node in model._nodes_by_depth[depth]:
            layer = node.operation
            if isinstance(layer, keras.layers.InputLayer):
                continue
            convert = _CONVERTERS.get(type(layer))
            if convert is None:
                raise ValueError(
                    f"layer '{layer.name}' of class {type(layer).__name__} has no tf_keras "
                    f"conversion in the tfmot bridge; supported: {', '.join(SUPPORTED)}"
                )
            args = node.arguments.args
            x = keras.tree.map_structure(
                lambda t: ctx.tensors[id(t)] if isinstance(t, keras.KerasTensor) else t, args[0]
            )
            out = convert(layer, x, ctx, node)
            outs = node.output_tensors
            if len(outs) != 1:
                raise ValueError(f"layer '{layer.name}' has {len(outs)} outputs; one is supported")
            ctx.tensors[id(outs[0])] = out
    outputs = [ctx.tensors[id(t)] for t in model.outputs]
    tfk_model = tfk.Model(inputs if len(inputs) > 1 else inputs[0],
                          outputs if len(outputs) > 1 else outputs[0], name=model.name)
    if check:
        diff, magnitude = max_difference(model, tfk_model)
        allowed = atol * max(1.0, magnitude)
        if diff > allowed:
            raise AssertionError(
                f"the tf_keras model of '{model.name}' differs from the Keras 3 model by "
                f"{diff:.3g} (allowed {allowed:.3g})"
            )
    return tfk_model


def _as_tf_keras(model, root="split"):
    return model if _is_tf_keras(model) else to_tf_keras(model, root=root)


def _copy(tfk_model):
    """A tf_keras model with the same architecture and its own copy of the weights."""
    tfk = _tfk()
    with tfk.utils.custom_object_scope(_custom_objects()):
        clone = tfk.models.clone_model(tfk_model)
    clone.set_weights(tfk_model.get_weights())
    return clone


def quantize_aware(model, root="split", calibration_data=None):
    """A tfmot quantization-aware copy (fake-quant wrappers) of a Keras 3 or tf_keras model.

    Every layer gets tfmot's default 8-bit scheme (per-channel conv kernels, conv + BN +
    ReLU quantized as one op); the channel slices of split root layers pass through
    unquantized (they only select channels). A Keras 3 model is converted first with
    `to_tf_keras(model, root=root)`; the source model is never modified.

    tfmot starts every activation range at [-6, 6] and moves it by an exponential average
    with decay 0.999, so a fine-tuning of a few hundred steps ends with ranges close to
    that guess. `calibration_data` (model inputs) sets each range instead to the min / max
    the float model produces on it, as post-training quantization does.
    """
    tfmot = _tfmot()
    qk = tfmot.quantization.keras
    from tensorflow_model_optimization.python.core.quantization.keras.default_8bit import (
        default_8bit_quantize_configs as configs,
    )

    tfk_model = _as_tf_keras(model, root)
    slicer = _channel_slice_class()

    def annotate(layer):
        if isinstance(layer, slicer):
            return qk.quantize_annotate_layer(layer, configs.NoOpQuantizeConfig())
        return qk.quantize_annotate_layer(layer)

    tfk = _tfk()
    with qk.quantize_scope({**_custom_objects(),
                            "NoOpQuantizeConfig": configs.NoOpQuantizeConfig}):
        annotated = tfk.models.clone_model(tfk_model, clone_function=annotate)
        qat = qk.quantize_apply(annotated)
    if calibration_data is not None:
        calibrate_ranges(qat, tfk_model, calibration_data)
    return qat


# range variables of tfmot's quantizers: what they quantize (a layer's output, or the
# pre-activation of a conv / Dense whose activation is not ReLU, e.g. softmax logits)
_RANGE_KINDS = {"output": "out", "post_activation": "out", "quantize_layer": "out",
                "pre_activation": "pre"}


def _linear_twin(layer):
    """A copy of a tf_keras conv / Dense layer without its activation (same weights)."""
    config = layer.get_config()
    config["activation"] = "linear"
    config["name"] = f"{layer.name}_pre_activation"
    twin = type(layer).from_config(config)
    twin.build(layer.input_shape)
    twin.set_weights(layer.get_weights())
    return twin


def calibrate_ranges(qat_model, float_model, images, batch_size=250):
    """Set the ranges of `qat_model` from `float_model` (the tf_keras model it was made
    from) on `images`, as post-training quantization calibrates them: every activation
    range to min(0, min) .. max(0, max) of the float tensor it quantizes, every kernel
    range to the kernel's own (per channel for convs). Returns how many ranges were set."""
    tfk = _tfk()
    float_names = {layer.name for layer in float_model.layers}
    targets = {}  # (float layer name, "out" | "pre") -> [(min var, max var)]
    for layer in qat_model.layers:
        inner = getattr(layer, "layer", None)
        name = inner.name if inner is not None else None
        if type(layer).__name__ == "QuantizeLayer":
            name = float_model.layers[0].name  # the model input
        if name not in float_names:
            continue
        pairs = {}
        for v in layer.non_trainable_weights:
            base = v.name.split("/")[-1].split(":")[0]
            if type(layer).__name__ == "QuantizeLayer":  # named after the layer: name_1_min
                base = "quantize_layer_" + base.rsplit("_", 1)[-1]
            for prefix, kind in _RANGE_KINDS.items():
                if base in (f"{prefix}_min", f"{prefix}_max"):
                    pairs.setdefault(kind, {})[base.rsplit("_", 1)[1]] = v
        for kind, pair in pairs.items():
            targets.setdefault((name, kind), []).append((pair["min"], pair["max"]))
    if not targets:
        return _calibrate_kernel_ranges(qat_model)
    keys = list(targets)
    tensors = []
    for name, kind in keys:
        layer = float_model.get_layer(name)
        tensors.append(layer.output if kind == "out" else _linear_twin(layer)(layer.input))
    probe = tfk.Model(float_model.inputs, tensors)
    lows = dict.fromkeys(keys, 0.0)
    highs = dict.fromkeys(keys, 0.0)
    images = np.asarray(images, dtype="float32")
    for start in range(0, len(images), batch_size):
        outs = probe(images[start:start + batch_size], training=False)
        outs = outs if isinstance(outs, (list, tuple)) else [outs]
        for key, out in zip(keys, outs):
            out = np.asarray(out)
            lows[key] = min(lows[key], float(out.min()))
            highs[key] = max(highs[key], float(out.max()))
    count = 0
    for key in keys:
        for vmin, vmax in targets[key]:
            vmin.assign(np.full(vmin.shape, lows[key], "float32"))
            vmax.assign(np.full(vmax.shape, highs[key], "float32"))
            count += 1
    return count + _calibrate_kernel_ranges(qat_model)


def _calibrate_kernel_ranges(qat_model):
    """Kernel ranges as tfmot's symmetric last-value quantizer sets them in a training step
    (per output channel for convs, per tensor for Dense); tfmot starts them at [-6, 6]."""
    count = 0
    for layer in qat_model.layers:
        found = {v.name.split("/")[-1].split(":")[0]: v for v in layer.weights}
        kernel, vmin, vmax = (found.get(n) for n in ("kernel", "kernel_min", "kernel_max"))
        if kernel is None or vmin is None or vmax is None:
            continue
        k = kernel.numpy()
        axes = tuple(range(k.ndim - 1)) if vmin.shape.rank == 1 else None
        bound = np.max(np.abs(k), axis=axes).astype("float32")
        if np.shape(bound) != tuple(vmin.shape):
            continue
        vmin.assign(-bound)
        vmax.assign(bound)
        count += 1
    return count


def recalibrate_batch_norm(model, images, batch_size=256):
    """Re-estimate every BatchNormalization's moving mean and variance of a tf_keras model
    (plain, QAT or stripped) as the average over `images` in training mode.

    Fine-tuning for a few dozen steps (and pruning most of all) changes what each BN sees
    faster than momentum 0.99 lets its statistics follow. Call it on stripped pruned
    models (a pruning wrapper in training mode may prune again)."""
    bns = []
    for layer in model.layers:
        inner = getattr(layer, "layer", layer)
        if type(inner).__name__ == "BatchNormalization":
            bns.append(inner)
    saved = [bn.momentum for bn in bns]
    images = np.asarray(images, dtype="float32")
    try:
        for k, start in enumerate(range(0, len(images), batch_size)):
            for bn in bns:
                bn.momentum = k / (k + 1)  # running mean of the per-batch statistics
            model(images[start:start + batch_size], training=True)
    finally:
        for bn, m in zip(bns, saved):
            bn.momentum = m
    return len(bns)


def _even_frequency(begin_step, end_step, frequency):
    """The largest frequency <= `frequency` that lands a pruning step exactly on end_step."""
    span = end_step - begin_step
    return next(f for f in range(min(frequency, span), 0, -1) if span % f == 0)


def prune(model, target_sparsity, begin_step=0, end_step=None, schedule="polynomial",
          initial_sparsity=0.0, frequency=100, root="split"):
    """Wrap every Conv2D and Dense kernel for magnitude pruning to `target_sparsity`.

    `schedule="polynomial"` ramps from `initial_sparsity` at `begin_step` to the target at
    `end_step` (tfmot's cubic PolynomialDecay; `frequency` is lowered so a pruning step
    falls exactly on `end_step`); "constant" prunes to the target every `frequency` steps
    from `begin_step` on. Each layer is pruned to the same sparsity. Train with `fine_tune`
    (it adds the UpdatePruningStep callback), then `strip`. Returns a new model; the input
    model (Keras 3 or tf_keras) keeps its weights.
    """
    if not 0.0 <= target_sparsity < 1.0:
        raise ValueError(f"target_sparsity must be in [0, 1), received {target_sparsity!r}")
    sparsity_lib = _tfmot().sparsity.keras
    if schedule == "polynomial":
        if end_step is None or end_step <= begin_step:
            raise ValueError(
                f"schedule='polynomial' needs end_step > begin_step, received "
                f"begin_step={begin_step}, end_step={end_step}"
            )
        sched = sparsity_lib.PolynomialDecay(
            initial_sparsity, target_sparsity, begin_step, end_step,
            frequency=_even_frequency(begin_step, end_step, frequency))
    elif schedule == "constant":
        sched = sparsity_lib.ConstantSparsity(target_sparsity, begin_step,
                                              end_step=-1 if end_step is None else end_step,
                                              frequency=frequency)
    else:
        raise ValueError(
            f"schedule must be 'polynomial' or 'constant', received schedule={schedule!r}"
        )
    tfk = _tfk()
    tfk_model = model if not _is_tf_keras(model) else _copy(model)
    tfk_model = _as_tf_keras(tfk_model, root)
    prunable = (tfk.layers.Conv2D, tfk.layers.Dense)

    def wrap(layer):
        if isinstance(layer, prunable):
            return sparsity_lib.prune_low_magnitude(layer, pruning_schedule=sched)
        return layer

    with tfk.utils.custom_object_scope(_custom_objects()):
        return tfk.models.clone_model(tfk_model, clone_function=wrap)


def strip(model):
    """The model without pruning wrappers (kernels keep their zeros); other models unchanged."""
    with _tfk().utils.custom_object_scope(_custom_objects()):
        return _tfmot().sparsity.keras.strip_pruning(model)


def sparsity(model):
    """Share of exact zeros in the kernels of Conv2D / Dense layers of a (stripped) model."""
    zeros = total = 0
    for layer in model.layers if hasattr(model, "layers") else []:
        inner = getattr(layer, "layer", layer)  # pruning / quantize wrappers
        kernel = getattr(inner, "kernel", None)
        if kernel is None or type(inner).__name__ not in ("Conv2D", "Dense"):
            continue
        k = np.asarray(kernel)
        zeros += int(np.sum(k == 0))
        total += k.size
    return zeros / total if total else 0.0


def _dataset(data, batch_size, shuffle, seed):
    import tensorflow as tf

    if isinstance(data, tf.data.Dataset):
        return data
    x, y = data
    ds = tf.data.Dataset.from_tensor_slices((np.asarray(x, "float32"), np.asarray(y, "int64")))
    if shuffle:
        ds = ds.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def _has_pruning(model):
    return any(type(layer).__name__ == "PruneLowMagnitude" for layer in model.layers)


def fine_tune(tfk_model, train_data, epochs=1, lr=1e-3, batch_size=128, optimizer="sgd",
              from_logits=False, seed=0, verbose=0, callbacks=()):
    """Fine-tune a tf_keras model (QAT or pruned) on `(images, integer labels)` or a batched
    tf.data.Dataset of such pairs, with a cosine-decayed learning rate from `lr` to 0.

    `optimizer` is "sgd" (Nesterov momentum 0.9) or "adam". Pruned models get tfmot's
    UpdatePruningStep callback. Returns the Keras history dict.
    """
    tfk = _tfk()
    ds = _dataset(train_data, batch_size, shuffle=True, seed=seed)
    steps = int(ds.cardinality()) * epochs
    if steps <= 0:
        raise ValueError("train_data gives no batches (an empty or infinite dataset)")
    schedule = tfk.optimizers.schedules.CosineDecay(lr, steps)
    if optimizer == "sgd":
        opt = tfk.optimizers.SGD(schedule, momentum=0.9, nesterov=True)
    elif optimizer == "adam":
        opt = tfk.optimizers.Adam(schedule)
    else:
        raise ValueError(f"optimizer must be 'sgd' or 'adam', received optimizer={optimizer!r}")
    tfk_model.compile(opt, tfk.losses.SparseCategoricalCrossentropy(from_logits=from_logits),
                      metrics=["accuracy"])
    callbacks = list(callbacks)
    if _has_pruning(tfk_model):
        callbacks.append(_tfmot().sparsity.keras.UpdatePruningStep())
    history = tfk_model.fit(ds, epochs=epochs, verbose=verbose, callbacks=callbacks)
    return history.history


def _representative(data, count):
    if callable(data):
        return data
    arr = np.asarray(data, dtype="float32")[:count]

    def gen():
        for i in range(len(arr)):
            yield [arr[i:i + 1]]

    return gen


def to_tflite_int8(tfk_model, representative_data, count=200):
    """Full-integer TFLite bytes: int8 weights and activations, int32 biases, int8 I/O.

    `representative_data` is an array of model inputs (the first `count` are used, one
    at a time) or a generator function yielding `[batch]` lists. The model may be a float
    tf_keras model (post-training quantization), a QAT model (its ranges are used) or a
    Keras 3 model (converted with `to_tf_keras` first). Only TFLITE_BUILTINS_INT8 ops are
    allowed, so conversion fails rather than leave a float op behind.
    """
    import tensorflow as tf

    model = _as_tf_keras(tfk_model)
    model = strip(model) if _has_pruning(model) else model
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = _representative(representative_data, count)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    return converter.convert()


def _interpreter(model, threads=None, delegates=True):
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    kwargs = {"num_threads": threads or min(2, os.cpu_count() or 1)}
    if not delegates:
        kwargs["experimental_op_resolver_type"] = OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    if isinstance(model, (bytes, bytearray)):
        return Interpreter(model_content=bytes(model), **kwargs)
    path = Path(model)
    if not path.is_file():
        raise ValueError(f"TFLite file {str(path)!r} does not exist")
    return Interpreter(model_path=str(path), **kwargs)


def evaluate_tflite(model, images, labels, batch_size=250):
    """Top-1 accuracy of a .tflite (bytes or path) in the LiteRT interpreter.

    `images` are float inputs exactly as the Keras model takes them (already preprocessed);
    an int8 input tensor gets them quantized with its own scale and zero point.
    """
    images = np.asarray(images, dtype="float32")
    labels = np.asarray(labels).reshape(-1)
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    interp = _interpreter(model)
    inp = interp.get_input_details()[0]
    correct = 0
    for start in range(0, len(images), batch_size):
        x = images[start:start + batch_size]
        if tuple(inp["shape"]) != x.shape:
            interp.resize_tensor_input(inp["index"], x.shape)
            interp.allocate_tensors()
            inp = interp.get_input_details()[0]
        if inp["dtype"] != np.float32:
            scale, zero = inp["quantization"]
            info = np.iinfo(inp["dtype"])
            x = np.clip(np.round(x / scale + zero), info.min, info.max).astype(inp["dtype"])
        interp.set_tensor(inp["index"], x)
        interp.invoke()
        out = interp.get_tensor(interp.get_output_details()[0]["index"])
        correct += int(np.sum(np.argmax(out, -1) == labels[start:start + batch_size]))
    return correct / len(labels)


def tflite_tensor_types(model):
    """{tensor name: numpy dtype name} of a .tflite (bytes or path), without delegates."""
    interp = _interpreter(model, delegates=False)
    interp.allocate_tensors()
    return {d["name"]: np.dtype(d["dtype"]).name for d in interp.get_tensor_details()}


def save_tflite(blob, path):
    """Write TFLite bytes to `path` atomically (temp file + rename); returns the Path."""
    from .. import io

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return io.write_bytes(path, blob)
