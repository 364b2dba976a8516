"""Segmentation losses (keras.ops, any backend): soft Dice + cross-entropy.

For BraTS the outputs are independent sigmoid maps of the nested regions WT, TC, ET
(`mode="sigmoid"`, binary cross-entropy); for exclusive classes use softmax outputs with
one-hot targets (`mode="softmax"`, categorical cross-entropy).
"""

from __future__ import annotations

import keras
from keras import ops

from ..layers.base import PACKAGE


def soft_dice(y_true, y_pred, smooth=1e-5, axis=(1, 2, 3)):
    """Per-example, per-channel soft Dice (N, C) of channels-last volumes."""
    y_true = ops.cast(y_true, y_pred.dtype)
    inter = ops.sum(y_true * y_pred, axis=axis)
    denom = ops.sum(y_true, axis=axis) + ops.sum(y_pred, axis=axis)
    return (2.0 * inter + smooth) / (denom + smooth)


@keras.saving.register_keras_serializable(package=PACKAGE)
class DiceCELoss(keras.losses.Loss):
    """(1 - mean soft Dice) + cross-entropy, weighted by `dice_weight` / `ce_weight`.

    >>> import numpy as np
    >>> y = np.zeros((1, 4, 4, 4, 3), "float32"); y[:, 1:3, 1:3, 1:3] = 1
    >>> float(DiceCELoss()(y, y * 0.98 + 0.01)) < 0.1
    True
    """

    def __init__(self, mode="sigmoid", dice_weight=1.0, ce_weight=1.0, name="dice_ce", **kwargs):
        super().__init__(name=name, **kwargs)
        if mode not in ("sigmoid", "softmax"):
            raise ValueError(f"mode must be 'sigmoid' or 'softmax', received mode={mode!r}")
        self.mode, self.dice_weight, self.ce_weight = mode, dice_weight, ce_weight

    def call(self, y_true, y_pred):
        y_true = ops.cast(y_true, y_pred.dtype)
        dice = 1.0 - ops.mean(soft_dice(y_true, y_pred), axis=-1)
        if self.mode == "sigmoid":
            ce = keras.losses.binary_crossentropy(y_true, y_pred)
        else:
            ce = keras.losses.categorical_crossentropy(y_true, y_pred)
        ce = ops.mean(ops.reshape(ce, (ops.shape(ce)[0], -1)), axis=-1)
        return self.dice_weight * dice + self.ce_weight * ce

    def get_config(self):
        return {**super().get_config(), "mode": self.mode, "dice_weight": self.dice_weight,
                "ce_weight": self.ce_weight}
