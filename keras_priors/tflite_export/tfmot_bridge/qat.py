"""Quantization-aware training: tfmot's `quantize_model` on the tf_keras twin, with the
fake-quant ranges optionally calibrated as post-training quantization would set them."""

from __future__ import annotations

import functools

import numpy as np

from .converters import channel_slice_class, custom_objects, tf_keras, tfmot
from .twin import as_tf_keras


@functools.cache
def pass_through_config():
    """A tfmot `QuantizeConfig` (public API) that quantizes nothing: for layers that only
    move values, such as the channel slices of split root layers."""

    class PassThrough(tfmot().quantization.keras.QuantizeConfig):
        def get_weights_and_quantizers(self, layer):
            return []

        def get_activations_and_quantizers(self, layer):
            return []

        def set_quantize_weights(self, layer, quantize_weights):
            pass

        def set_quantize_activations(self, layer, quantize_activations):
            pass

        def get_output_quantizers(self, layer):
            return []

        def get_config(self):
            return {}

    return PassThrough


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
    qk = tfmot().quantization.keras
    tfk_model = as_tf_keras(model, root)
    slicer = channel_slice_class()

    def annotate(layer):
        if isinstance(layer, slicer):
            return qk.quantize_annotate_layer(layer, pass_through_config()())
        return qk.quantize_annotate_layer(layer)

    tfk = tf_keras()
    with qk.quantize_scope({**custom_objects(), "PassThrough": pass_through_config()}):
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
    tfk = tf_keras()
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

