"""Instance normalisation for channels-last volumes and images, lean in training.

`GroupNormalization` is Keras' layer of that name with a faster path for one group per
channel (instance normalisation, `groups=-1`): the same weights (gamma, beta), epsilon and
outputs, so weights saved from either load into the other. It computes the statistics in
float32 over the spatial axes without reshaping into groups, applies them as one scale and
shift per (sample, channel), and on TensorFlow its training gradient is written out: the
backward pass keeps only the layer input and the per-channel statistics.

    >>> import numpy as np
    >>> x = np.random.default_rng(0).normal(size=(2, 4, 4, 4, 3)).astype("float32")
    >>> ref = keras.layers.GroupNormalization(groups=-1)
    >>> ours = GroupNormalization(groups=-1)
    >>> _ = ref(x), ours(x)
    >>> ours.set_weights(ref.get_weights())
    >>> bool(np.allclose(ours(x), ref(x), atol=1e-5))
    True
"""

from __future__ import annotations

import keras
from keras import ops

from .base import PACKAGE, recompute_source


def _normalize(x, gamma, beta, axes, epsilon):
    """`(y, mean, rstd, scale)`: `x` (float32) normalised per (sample, channel) over `axes`,
    as one scale and shift, `y = x * scale + (beta - mean * scale)`, scale = gamma / std."""
    mean = ops.mean(x, axis=axes, keepdims=True)
    rstd = ops.rsqrt(ops.mean(ops.square(x - mean), axis=axes, keepdims=True) + epsilon)
    scale = rstd * gamma
    return x * scale + (beta - mean * scale), mean, rstd, scale


def _instance_norm_tf(x, gamma, beta, axes, epsilon, source=None):
    """TensorFlow: the normalisation with a hand-written gradient that keeps only `x`,
    the mean and 1 / std; with `source = (fn, u)`, where `x = fn(u)`, it keeps `u`
    instead and recomputes `x` once the gradient arrives. With n = |axes|,
    xhat = (x - mean) * rstd, g = dL/dy and a = gamma * rstd:
    dx = a * (g - sum(g) / n - xhat * sum(g * xhat) / n)."""
    import tensorflow as tf

    @tf.custom_gradient
    def run(x, gamma, beta):
        y, mean, rstd, scale = _normalize(x, gamma, beta, axes, epsilon)

        def grad(dy):
            x_ = x
            if source is not None:
                fn, u = source
                with tf.control_dependencies([dy]):
                    x_ = tf.cast(fn(tf.identity(u)), x.dtype)
            n = tf.cast(tf.reduce_prod(tf.gather(tf.shape(x), axes)), x.dtype)
            s1 = tf.reduce_sum(dy, axes, keepdims=True)
            s2 = rstd * (tf.reduce_sum(dy * x_, axes, keepdims=True) - mean * s1)  # sum g*xhat
            coef = scale * s2 * rstd / n
            dx = dy * scale - x_ * coef + (mean * coef - scale * s1 / n)
            batch_and_space = [0, *axes]
            return (dx, tf.reduce_sum(s2, batch_and_space, keepdims=True),
                    tf.reduce_sum(s1, batch_and_space, keepdims=True))

        return y, grad

    return run(x, gamma, beta)


@keras.saving.register_keras_serializable(package=PACKAGE)
class GroupNormalization(keras.layers.GroupNormalization):
    """`keras.layers.GroupNormalization`, with a faster and leaner path for instance
    normalisation: with one group per channel (`groups=-1` or the number of channels) over
    the last axis, the statistics are taken over the spatial axes directly and, on
    TensorFlow, training (`training=True`, as in `fit`) uses the hand-written gradient.
    Other settings run Keras' own code.

    A drop-in replacement: same arguments, same weights, and the same class name, which is
    what Keras' `.weights.h5` layout is keyed by, so files saved from either load into the
    other.

    >>> layer = GroupNormalization(groups=-1)
    >>> tuple(layer(keras.ops.ones((1, 4, 4, 4, 8))).shape)
    (1, 4, 4, 4, 8)
    """

    def _per_channel(self, inputs):
        rank = len(inputs.shape)
        return (rank >= 3 and self.axis in (-1, rank - 1)
                and self.groups in (-1, inputs.shape[-1]))

    def call(self, inputs, training=None):
        if not self._per_channel(inputs):
            return super().call(inputs)
        rank = len(inputs.shape)
        axes = list(range(1, rank - 1))
        x = ops.cast(inputs, "float32")
        shape = (1,) * (rank - 1) + (inputs.shape[-1],)
        gamma = (ops.reshape(ops.cast(self.gamma, "float32"), shape) if self.scale
                 else ops.ones(shape, "float32"))
        beta = (ops.reshape(ops.cast(self.beta, "float32"), shape) if self.center
                else ops.zeros(shape, "float32"))
        if training and keras.backend.backend() == "tensorflow":
            y = _instance_norm_tf(x, gamma, beta, axes, self.epsilon, recompute_source(inputs))
        else:  # inference, and training on other backends (their compilers fuse this)
            y = _normalize(x, gamma, beta, axes, self.epsilon)[0]
        return ops.cast(y, self.compute_dtype)
