"""Data sources and pipelines on the real Fashion-MNIST files (Debian dataset-fashion-mnist)."""

import gzip
import re
import shutil

import numpy as np
import pytest

from keras_priors import data
from keras_priors.data import sources


@pytest.fixture(scope="module")
def fm():
    return data.load("fashion_mnist", limit_train=600, limit_test=200)


def test_real_fashion_mnist_files():
    full = data.fashion_mnist()
    x, y = full.arrays["train"]
    assert x.shape == (60000, 28, 28, 1) and x.dtype == np.uint8
    assert full.test_size == 10000 and full.num_classes == 10
    assert sorted(np.unique(y)) == list(range(10))
    assert abs(x.mean() / 255 - 0.2860) < 0.001  # the normalisation constants are its own


def test_missing_files_say_how_to_install(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        data.fashion_mnist(tmp_path)


def test_path_argument_and_environment_override(tmp_path, monkeypatch):
    for stem in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        array = data.read_idx(f"{sources.FASHION_MNIST_DIR}/{stem}.gz")[:50]
        data.write_idx(tmp_path / stem, array)  # uncompressed copies are read too
    monkeypatch.setenv(sources.FASHION_MNIST_ENV, str(tmp_path))
    assert data.fashion_mnist().train_size == 50
    assert data.fashion_mnist(sources.FASHION_MNIST_DIR, limit_train=7).train_size == 7


def test_corrupt_idx_files_name_the_file(tmp_path):
    source = f"{sources.FASHION_MNIST_DIR}/t10k-labels-idx1-ubyte.gz"
    raw = gzip.open(source).read()
    (tmp_path / "short-idx1-ubyte").write_bytes(raw[:-10])
    with pytest.raises(ValueError, match="short-idx1-ubyte holds 9990 bytes .* truncated or corrupt"):
        data.read_idx(tmp_path / "short-idx1-ubyte")
    (tmp_path / "bad.gz").write_bytes(gzip.compress(raw)[:200])
    with pytest.raises(ValueError, match="bad.gz is corrupt or truncated"):
        data.read_idx(tmp_path / "bad.gz")
    (tmp_path / "x").write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(ValueError, match="is not an IDX file"):
        data.read_idx(tmp_path / "x")


def _as_arrays(ds):
    xs, ys = zip(*[(x.numpy(), y.numpy()) for x, y in ds])
    return np.concatenate(xs), np.concatenate(ys)


def test_epochs_are_deterministic_and_independent(fm):
    a = _as_arrays(data.epoch_batches(fm, 100, seed=3, epoch=1))
    b = _as_arrays(data.epoch_batches(fm, 100, seed=3, epoch=1))
    c = _as_arrays(data.epoch_batches(fm, 100, seed=3, epoch=2))
    np.testing.assert_array_equal(a[0], b[0])
    assert not np.array_equal(a[0], c[0])
    both = _as_arrays(data.train_batches(fm, 100, seed=3, first_epoch=0, epochs=2))
    resumed = _as_arrays(data.train_batches(fm, 100, seed=3, first_epoch=1, epochs=2))
    np.testing.assert_array_equal(both[0][600:], resumed[0])  # epoch 1 alone == epoch 1 after 0


def test_augmentation_and_normalisation(fm):
    plain = _as_arrays(data.epoch_batches(fm, 100, seed=0, epoch=0, augment=False))
    augmented = _as_arrays(data.epoch_batches(fm, 100, seed=0, epoch=0, augment=True))
    assert plain[0].shape == augmented[0].shape == (600, 28, 28, 1)
    np.testing.assert_array_equal(plain[1], augmented[1])  # same order, same labels
    assert not np.array_equal(plain[0], augmented[0])
    assert abs(plain[0].mean()) < 0.1 and abs(plain[0].std() - 1) < 0.1
    assert plain[1].shape == (600, 10) and set(plain[1].sum(-1)) == {1.0}
    ev = _as_arrays(data.eval_batches(fm, 64))
    np.testing.assert_array_equal(ev[1].argmax(-1), fm.arrays["test"][1])


def test_batch_larger_than_data(fm):
    with pytest.raises(ValueError, match="batch_size=1000 is larger than the 600 training examples"):
        data.train_batches(fm, 1000, 0, 0, 1)


def test_image_folder(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for label in ("cats", "dogs"):
        (tmp_path / label).mkdir()
        for i in range(5):
            Image.fromarray(rng.integers(0, 255, (40, 30, 3), dtype=np.uint8)).save(
                tmp_path / label / f"{i}.png")
    folder = data.load(str(tmp_path), image_size=(16, 16))
    assert folder.class_names == ("cats", "dogs")
    assert folder.train_size + folder.test_size == 10 and folder.input_shape == (16, 16, 3)
    x, y = _as_arrays(data.epoch_batches(folder, 2, seed=0, epoch=0))
    assert x.shape[1:] == (16, 16, 3)
    with pytest.raises(ValueError, match="needs one subfolder per class"):
        shutil.rmtree(tmp_path / "dogs")
        data.image_folder(tmp_path)


def _folder(root, n=5, size=(40, 30)):
    from PIL import Image

    rng = np.random.default_rng(0)
    for label in ("cats", "dogs"):
        (root / label).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(
                root / label / f"{i}.png")
    return root


def test_image_folder_limits_are_applied(tmp_path):
    folder = data.load(str(_folder(tmp_path, n=10)), image_size=(8, 8), limit_train=5,
                       limit_test=2)
    assert (folder.train_size, folder.test_size) == (5, 2)
    assert len(folder.arrays["train"][0]) == 5 and len(folder.arrays["test"][1]) == 2


def test_a_corrupt_image_is_named_before_anything_is_decoded(tmp_path):
    root = _folder(tmp_path)
    good = (root / "cats" / "1.png").read_bytes()
    (root / "cats" / "1.png").write_bytes(good[: len(good) // 2])
    (root / "dogs" / "3.png").write_bytes(b"not an image")
    with pytest.raises(ValueError) as e:
        data.load(str(root), image_size=(8, 8))
    message = str(e.value)
    assert message.startswith("unreadable image files: ") and "\n" not in message
    assert f"{root / 'cats' / '1.png'} (" in message and f"{root / 'dogs' / '3.png'} (" in message
    with pytest.raises(ValueError, match="unreadable image files: .*cats/1.png"):
        data.check(str(root))
    assert data.check(str(_folder(tmp_path / "ok"))) == ("folder", str(tmp_path / "ok"))


@pytest.mark.parametrize("limit", [0, -3, 2.5, True])
def test_limits_must_be_positive_integers(limit):
    with pytest.raises(ValueError, match=rf"limit_train must be a positive number of examples "
                                         rf"\(or left out for all\), received limit_train={limit!r}"):
        data.load("fashion_mnist", limit_train=limit)
    with pytest.raises(ValueError, match=rf"received limit_test={limit!r}"):
        data.fashion_mnist(limit_test=limit)


def test_a_missing_folder_is_named_not_read_as_a_tfds_name(tmp_path):
    accepted = "Accepted: fashion_mnist, an image folder"
    for spec in (str(tmp_path / "photos"), "./photos", "~/no_such_photos_xyz", "photos/train",
                 "folder:photos"):
        with pytest.raises(ValueError, match=rf"^data {re.escape(spec)}: no such folder\. {accepted}"):
            data.load(spec)
    with pytest.raises(ValueError, match=r"^--data photos_xyz: no such folder, and no tfds "
                                         r"dataset of that name\. Accepted: "):
        data.resolve("photos_xyz", option="--data")
    assert data.resolve("cifar10") == ("tfds", "cifar10")
    assert data.resolve(str(_folder(tmp_path / "p"))) == ("folder", str(tmp_path / "p"))


def test_unknown_tfds_name_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="tfds dataset 'no_such_dataset_xyz' is not available"):
        data.load("tfds:no_such_dataset_xyz", data_dir=str(tmp_path))


def test_a_prepared_tfds_dataset_by_name_and_data_dir(tmp_path, fm):
    """A real tfds dataset on disk (made from Fashion-MNIST images), found by name."""
    import tensorflow as tf
    import tensorflow_datasets as tfds

    (xtr, ytr), (xte, yte) = fm.arrays["train"], fm.arrays["test"]
    features = tfds.features.FeaturesDict({
        "image": tfds.features.Image(shape=(28, 28, 1)),
        "label": tfds.features.ClassLabel(names=list(fm.class_names)),
    })
    split = lambda x, y: tf.data.Dataset.from_tensor_slices({"image": x[:40], "label": y[:40]})  # noqa: E731
    tfds.dataset_builders.store_as_tfds_dataset(
        "tiny_fashion", "1.0.0", features, {"train": split(xtr, ytr), "test": split(xte, yte)},
        data_dir=tmp_path)
    ds = data.load("tfds:tiny_fashion", data_dir=str(tmp_path))
    assert (ds.train_size, ds.test_size, ds.input_shape) == (40, 40, (28, 28, 1))
    assert ds.class_names == fm.class_names
    x, y = _as_arrays(data.epoch_batches(ds, 20, seed=0, epoch=0, augment=False))
    assert x.shape == (40, 28, 28, 1) and sorted(y.argmax(-1)) == sorted(ytr[:40])


def test_hold_out_moves_the_last_training_examples_to_validation(fm):
    held = data.hold_out(fm, 100)
    assert (held.train_size, held.validation_size, held.test_size) == (500, 100, 200)
    x_train = np.stack([x for x, _ in held.train().as_numpy_iterator()])
    x_val = np.stack([x for x, _ in held.validation().as_numpy_iterator()])
    np.testing.assert_array_equal(x_train, fm.arrays["train"][0][:500])
    np.testing.assert_array_equal(x_val, fm.arrays["train"][0][500:])
    assert held.arrays["validation"][1].shape == (100,)
    batches = list(data.eval_batches(held, 64, split="validation").as_numpy_iterator())
    assert sum(len(y) for _, y in batches) == 100
    assert data.steps_per_epoch(held, 100) == 5  # training sees only the 500 kept
    for bad in (0, -3, True, 1.5):
        with pytest.raises(ValueError, match="validation must be a positive number"):
            data.hold_out(fm, bad)
    with pytest.raises(ValueError, match="would hold out all 600 training examples"):
        data.hold_out(fm, 600)
    with pytest.raises(ValueError, match="has no validation split"):
        data.eval_batches(fm, split="validation")
