"""keras_priors GroupNormalization: the numbers and weights of Keras' layer, a
hand-written TensorFlow gradient for one group per channel, and the unit recomputation
behind a recomputing LowRankConv."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_priors.layers import GroupNormalization, LowRankConv3D

from .harness import record_recompute_sources


def _pair(shape, center=True, scale=True, groups=-1, seed=0):
    rng = np.random.default_rng(seed)
    ref = keras.layers.GroupNormalization(groups=groups, center=center, scale=scale)
    ours = GroupNormalization(groups=groups, center=center, scale=scale)
    ref.build(shape)
    ours.build(shape)
    ref.set_weights([rng.normal(size=w.shape).astype("float32") for w in ref.weights])
    ours.set_weights(ref.get_weights())
    return ref, ours


@pytest.mark.parametrize("shape,center,scale,groups", [
    ((2, 5, 6, 7, 3), True, True, -1), ((1, 9, 8, 4), True, True, 4),
    ((3, 4, 4, 4, 2), False, True, -1), ((2, 6, 5, 3), True, False, -1),
    ((2, 5, 4, 3, 4), True, True, 2)])  # 2 groups of 2: Keras' own code path
def test_outputs_and_gradients_equal_keras_group_normalization(shape, center, scale, groups):
    ref, ours = _pair(shape, center, scale, groups)
    rng = np.random.default_rng(1)
    x = tf.constant(rng.normal(3.0, 2.0, size=shape), tf.float32)  # mean far from 0
    probe = tf.constant(rng.normal(size=shape), tf.float32)

    def grads(layer):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x, training=True)
            loss = tf.reduce_sum(tf.nn.relu(y) * probe)
        return [y, *tape.gradient(loss, [x, *layer.trainable_variables])]

    for run in (grads, tf.function(grads)):
        got, want = run(ours), run(ref)
        assert len(got) == len(want) == 2 + center + scale
        for a, b in zip(got, want):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_group_normalization_weights_load_unchanged(tmp_path):
    """Keras' .weights.h5 layout is keyed by class names: a model saved with Keras'
    GroupNormalization loads into the same model built with ours (the shipped U-Net
    weights are such files), and back, computing the same."""
    def model(norm):
        inputs = keras.Input((6, 6, 6, 2))
        x = keras.layers.Conv3D(4, 3, padding="same", name="conv")(inputs)
        return keras.Model(inputs, keras.layers.ReLU()(norm(name="norm")(x)))

    old = model(lambda name: keras.layers.GroupNormalization(groups=-1, name=name))
    rng = np.random.default_rng(0)
    old.set_weights([rng.normal(size=w.shape).astype("float32") for w in old.weights])
    old.save_weights(tmp_path / "old.weights.h5")
    new = model(lambda name: GroupNormalization(groups=-1, name=name))
    new.load_weights(tmp_path / "old.weights.h5")
    x = rng.normal(size=(2, 6, 6, 6, 2)).astype("float32")
    np.testing.assert_allclose(new.predict(x, verbose=0), old.predict(x, verbose=0), atol=1e-5)
    new.save_weights(tmp_path / "new.weights.h5")
    back = model(lambda name: keras.layers.GroupNormalization(groups=-1, name=name))
    back.load_weights(tmp_path / "new.weights.h5")
    np.testing.assert_allclose(back.predict(x, verbose=0), old.predict(x, verbose=0), atol=1e-5)


def test_config_round_trip_and_channels_first_uses_keras_code():
    layer = GroupNormalization(groups=-1, epsilon=1e-5, center=False, name="n")
    again = GroupNormalization.from_config(layer.get_config())
    assert (again.epsilon, again.center, again.scale, again.groups) == (1e-5, False, True, -1)
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert type(restored) is GroupNormalization
    x = np.random.default_rng(3).normal(size=(2, 3, 5, 6)).astype("float32")
    ref = keras.layers.GroupNormalization(groups=-1, axis=1)
    ours = GroupNormalization(groups=-1, axis=1)
    np.testing.assert_allclose(ours(x), ref(x), atol=1e-5)


def test_bfloat16_policy_matches_group_normalization():
    shape = (2, 4, 5, 6, 3)
    x = np.random.default_rng(2).normal(size=shape).astype("float32")
    ref = keras.layers.GroupNormalization(groups=-1, dtype="mixed_bfloat16")
    ours = GroupNormalization(groups=-1, dtype="mixed_bfloat16")
    y_ref = ref(x)
    for training in (False, True):
        y = ours(x, training=training)
        assert y.dtype == y_ref.dtype == "bfloat16"
        np.testing.assert_allclose(np.float32(y), np.float32(y_ref), atol=0.05)


def test_norm_after_a_recomputing_composite_recomputes_its_input(monkeypatch):
    """In a traced training step, the norm fed by a recomputing LowRankConv3D keeps the
    composite's input and recomputes its own input from it: gradients equal the plain
    unit's, and the recomputation is what ran."""
    used = record_recompute_sources(monkeypatch)

    def unit(recompute):
        inputs = keras.Input((6, 5, 4, 3))
        x = LowRankConv3D(6, 3, basis="lr_join", padding="same", recompute=recompute,
                          name="conv")(inputs)
        x = keras.layers.ReLU()(GroupNormalization(groups=-1, name="norm")(x))
        x = LowRankConv3D(4, 3, basis="lr_join", padding="same", recompute=recompute,
                          name="conv2")(x)
        return keras.Model(inputs, GroupNormalization(groups=-1, name="norm2")(x))

    lean, plain = unit(True), unit(False)
    rng = np.random.default_rng(0)
    plain.set_weights([rng.normal(size=w.shape).astype("float32") for w in plain.weights])
    lean.set_weights(plain.get_weights())
    x = tf.constant(rng.normal(size=(2, 6, 5, 4, 3)), tf.float32)
    probe = tf.constant(rng.normal(size=(2, 6, 5, 4, 4)), tf.float32)

    @tf.function
    def grads(model):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(tf.nn.relu(model(x, training=True)) * probe)
        return [loss, *tape.gradient(loss, [x, *model.trainable_variables])]

    got = grads(lean)
    assert used == [True, True]  # both norms took the recomputing path
    used.clear()
    want = grads(plain)
    assert used == [False, False]
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_recomputing_unit_trains_under_mixed_bfloat16():
    """Under mixed_bfloat16 the recomputed convs (in the composite's and the norm's backward
    pass, outside the layer call) run in bf16 with the float32 weights cast: gradients
    agree with the storing path's to bf16 precision, and are float32 for the weights."""
    def unit(recompute):
        inputs = keras.Input((6, 5, 4, 3))
        x = LowRankConv3D(6, 3, basis="lr_join", padding="same", recompute=recompute,
                          dtype="mixed_bfloat16")(inputs)
        x = GroupNormalization(groups=-1, dtype="mixed_bfloat16")(x)
        return keras.Model(inputs, keras.layers.ReLU(dtype="mixed_bfloat16")(x))

    lean, plain = unit(True), unit(False)
    rng = np.random.default_rng(0)
    lean.set_weights([rng.normal(size=w.shape).astype("float32") for w in lean.weights])
    plain.set_weights(lean.get_weights())
    x = tf.constant(rng.normal(size=(2, 6, 5, 4, 3)), tf.float32)
    probe = tf.constant(rng.normal(size=(2, 6, 5, 4, 6)), tf.float32)

    @tf.function
    def grads(model):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(tf.cast(model(x, training=True), tf.float32) * probe)
        return tape.gradient(loss, model.trainable_variables)

    got, want = grads(lean), grads(plain)
    for a, b in zip(got, want):
        assert a.dtype == tf.float32
        scale = float(tf.reduce_max(tf.abs(b)))
        np.testing.assert_allclose(a, b, atol=0.05 * scale)


def test_sources_are_noted_only_while_tracing():
    from keras_priors.layers.base import mark_recomputable, recompute_source

    y = tf.ones((1, 2))
    mark_recomputable(y, tf.identity, y)  # eager: nothing kept
    assert recompute_source(y) is None

    @tf.function
    def traced():
        a = tf.ones((1, 2)) * 2.0
        b = a + 1.0
        mark_recomputable(b, lambda t: t + 1.0, a)
        found = recompute_source(b)
        assert found is not None and found[1] is a
        assert recompute_source(b) is None  # taken once
        return b

    traced()
