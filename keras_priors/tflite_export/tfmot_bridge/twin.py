"""`to_tf_keras`: the tf_keras (Keras 2) twin of a Keras 3 functional model, checked."""

from __future__ import annotations

import keras
import numpy as np

from ...complexity import functional, input_layers, walk
from .converters import _CONVERTERS, SUPPORTED, _Context, _np, custom_objects, tf_keras


def is_tf_keras(model):
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
    model = functional(model, "to_tf_keras")
    if root not in ("split", "grouped"):
        raise ValueError(f"root must be 'split' or 'grouped', received root={root!r}")
    ctx = _Context(root=root)
    inputs = []
    for t, layer in zip(model.inputs, input_layers(model)):
        tin = tf_keras().Input(shape=tuple(t.shape[1:]), dtype=t.dtype, name=layer.name)
        ctx.tensors[id(t)] = tin
        inputs.append(tin)
    for call in walk(model):
        layer = call.layer
        convert = _CONVERTERS.get(type(layer))
        if convert is None:
            raise ValueError(
                f"layer '{layer.name}' of class {type(layer).__name__} has no tf_keras "
                f"conversion in the tfmot bridge; supported: {', '.join(SUPPORTED)}"
            )
        x = keras.tree.map_structure(
            lambda t: ctx.tensors[id(t)] if isinstance(t, keras.KerasTensor) else t,
            call.args[0])
        if len(call.outputs) != 1:
            raise ValueError(f"layer '{layer.name}' has {len(call.outputs)} outputs; one is "
                             "supported")
        ctx.tensors[id(call.outputs[0])] = convert(layer, x, ctx, call)
    outputs = [ctx.tensors[id(t)] for t in model.outputs]
    tfk_model = tf_keras().Model(inputs if len(inputs) > 1 else inputs[0],
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


def as_tf_keras(model, root="split"):
    """`model` if it is a tf_keras model, else `to_tf_keras(model, root=root)`."""
    return model if is_tf_keras(model) else to_tf_keras(model, root=root)


def copy(tfk_model):
    """A tf_keras model with the same architecture and its own copy of the weights."""
    with tf_keras().utils.custom_object_scope(custom_objects()):
        clone = tf_keras().models.clone_model(tfk_model)
    clone.set_weights(tfk_model.get_weights())
    return clone

