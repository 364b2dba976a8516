"""One harness for every structured layer: config and `.keras` round trips, output
shape, parameter count (against the layer's own `conv_parts`), and plain-Keras references.
"""

from __future__ import annotations

import itertools

import keras
import numpy as np

PLAIN_ARGS = {
    "filters", "kernel_size", "strides", "padding", "dilation_rate", "groups", "basis",
    "combine", "implementation", "use_bias", "spatial_filters", "sequential",
}
CONV = {1: keras.layers.Conv1D, 2: keras.layers.Conv2D, 3: keras.layers.Conv3D}


def run_layer_checks(layer_cls, kwargs, input_shape, tmp_path, expected_params=None):
    """Config round trip, `.keras` round trip (bit-exact), output shape and params."""
    layer = layer_cls(**kwargs)
    x = np.random.default_rng(1).normal(size=input_shape).astype("float32")
    y = keras.ops.convert_to_numpy(layer(x))
    assert tuple(y.shape) == tuple(layer.compute_output_shape(input_shape))

    config = layer.get_config()
    clone = layer_cls.from_config(config)
    assert clone.get_config() == config
    for key, value in kwargs.items():
        if key in PLAIN_ARGS and not isinstance(value, list):
            stored = config[key]
            if isinstance(value, int) and isinstance(stored, tuple):
                value = (value,) * len(stored)
            assert stored == value, (key, stored, value)

    parts = layer.conv_parts(input_shape)
    assert layer.count_params() == sum(p.params for p in parts)
    if expected_params is not None:
        assert layer.count_params() == expected_params

    inputs = keras.Input(input_shape[1:])
    model = keras.Model(inputs, layer_cls(**kwargs)(inputs))
    model.set_weights(
        [np.random.default_rng(i).normal(size=w.shape) for i, w in enumerate(model.weights)]
    )
    path = tmp_path / f"{layer_cls.__name__}.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_array_equal(model.predict(x, verbose=0), loaded.predict(x, verbose=0))
    for a, b in zip(model.weights, loaded.weights):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b))
    return layer


def set_random_weights(layer, input_shape=None, seed=0, scale=1.0):
    """Random kernels *and* biases, so biases are checked too."""
    if not layer.built:
        layer.build(input_shape)
    assert layer.weights
    rng = np.random.default_rng(seed)
    layer.set_weights([(scale * rng.normal(size=w.shape)).astype("float32") for w in layer.weights])


def reference_conv(x, kernel, bias, strides, padding, dilation_rate):
    """A plain keras Conv with the given full kernel (and bias)."""
    rank = kernel.ndim - 2
    conv = CONV[rank](
        kernel.shape[-1],
        kernel.shape[:-2],
        strides=strides,
        padding=padding,
        dilation_rate=dilation_rate,
        use_bias=bias is not None,
    )
    conv.build(x.shape)
    conv.set_weights([kernel] if bias is None else [kernel, bias])
    return keras.ops.convert_to_numpy(conv(x))


def reference_combine(y, layer):
    kernel = keras.ops.convert_to_numpy(layer.combine_kernel)
    bias = None if layer.combine_bias is None else keras.ops.convert_to_numpy(layer.combine_bias)
    return reference_conv(y, kernel, bias, 1, "valid", 1)


def embedded_kernel(layer, in_channels):
    """Parallel low-rank basis zero-embedded in the centre of its bounding kernel."""
    bound = layer.bounding_kernel_size
    width = sum(n for _, n in layer.members)
    full = np.zeros((*bound, in_channels, width), "float32")
    start = 0
    for (shape, n), kernel in zip(layer.members, layer.basis_kernels):
        index = tuple(slice((k - s) // 2, (k - s) // 2 + s) for k, s in zip(bound, shape))
        full[(*index, slice(None), slice(start, start + n))] = keras.ops.convert_to_numpy(kernel)
        start += n
    biases = [keras.ops.convert_to_numpy(b) for b in layer.basis_biases if b is not None]
    return full, (np.concatenate(biases) if biases else None)


def composed_kernel(layer):
    """Sequential low-rank stages (no bias) composed into one full kernel."""
    kernels = [keras.ops.convert_to_numpy(k) for k in layer.basis_kernels]
    full = kernels[0]
    for nxt in kernels[1:]:
        rank = full.ndim - 2
        out = np.zeros(
            tuple(a + b - 1 for a, b in zip(full.shape[:rank], nxt.shape[:rank]))
            + (full.shape[-2], nxt.shape[-1]),
            "float64",
        )
        for p in itertools.product(*[range(s) for s in full.shape[:rank]]):
            for q in itertools.product(*[range(s) for s in nxt.shape[:rank]]):
                pos = tuple(a + b for a, b in zip(p, q))
                out[pos] += full[p] @ nxt[q]
        full = out
    return full.astype("float32")


def block_diagonal_kernel(layer, in_channels):
    """A root layer's grouped kernel as the equivalent full block-diagonal kernel."""
    kernel = keras.ops.convert_to_numpy(layer.kernel)
    g = layer.groups
    cg, fg = in_channels // g, kernel.shape[-1] // g
    full = np.zeros((*kernel.shape[:-2], in_channels, kernel.shape[-1]), "float32")
    for i in range(g):
        full[..., i * cg : (i + 1) * cg, i * fg : (i + 1) * fg] = kernel[..., i * fg : (i + 1) * fg]
    return full


def record_recompute_sources(monkeypatch):
    """A list that records, for each GroupNormalization training call on TensorFlow,
    whether it recomputes its input from a recomputing composite's input."""
    from keras_priors.layers import norm

    used, original = [], norm.recompute_source

    def spy(y):
        found = original(y)
        used.append(found is not None)
        return found

    monkeypatch.setattr(norm, "recompute_source", spy)
    return used
