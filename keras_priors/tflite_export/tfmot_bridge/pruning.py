"""Magnitude pruning with tfmot on the tf_keras twin: wrap, strip, measure sparsity."""

from __future__ import annotations

import numpy as np

from .converters import custom_objects, tf_keras, tfmot
from .twin import as_tf_keras, copy, is_tf_keras


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
    sparsity_lib = tfmot().sparsity.keras
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
    tfk = tf_keras()
    tfk_model = model if not is_tf_keras(model) else copy(model)
    tfk_model = as_tf_keras(tfk_model, root)
    prunable = (tfk.layers.Conv2D, tfk.layers.Dense)

    def wrap(layer):
        if isinstance(layer, prunable):
            return sparsity_lib.prune_low_magnitude(layer, pruning_schedule=sched)
        return layer

    with tfk.utils.custom_object_scope(custom_objects()):
        return tfk.models.clone_model(tfk_model, clone_function=wrap)


def strip(model):
    """The model without pruning wrappers (kernels keep their zeros); other models unchanged."""
    with tf_keras().utils.custom_object_scope(custom_objects()):
        return tfmot().sparsity.keras.strip_pruning(model)


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



def has_pruning(model):
    return any(type(layer).__name__ == "PruneLowMagnitude" for layer in model.layers)

