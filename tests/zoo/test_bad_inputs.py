"""Bad arguments and bad weight files give one-paragraph errors naming what is wrong, before
anything is loaded; options are never silently changed."""

import re

import numpy as np
import pytest

from keras_priors import zoo
from keras_priors.zoo import unet3d
from keras_priors.zoo import weights as weights_lib


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Real weight files of two widths of NiN, and truncated copies."""
    root = tmp_path_factory.mktemp("weights")
    narrow = zoo.load("nin", input_shape=(28, 28, 1), width=0.25)
    narrow.save_weights(root / "nin_narrow.weights.h5")
    narrow.save(root / "nin_narrow.keras")
    for name in ("nin_narrow.weights.h5", "nin_narrow.keras"):
        raw = (root / name).read_bytes()
        (root / f"truncated_{name}").write_bytes(raw[: len(raw) // 2])
    return root


def test_weights_of_another_channel_count_name_both_shapes():
    with pytest.raises(ValueError, match=re.escape(
            "weights='fashion_mnist' of 'nin_root8' were made for input_shape=(28, 28, 1), but "
            "input_shape=(32, 32, 3) was requested: the weights need rank 3 inputs with 1 "
            "channel(s)")):
        zoo.load("nin_root8", weights="fashion_mnist", input_shape=(32, 32, 3))
    # other spatial sizes of a globally pooled net take the same weights
    model = zoo.load("nin_root8", weights="fashion_mnist", input_shape=(32, 32, 1))
    assert model.input_shape == (None, 32, 32, 1)


def test_truncated_files_are_named_before_anything_is_built(files):
    h5 = files / "truncated_nin_narrow.weights.h5"
    with pytest.raises(weights_lib.WeightsError, match=rf"^weights file {re.escape(str(h5))} is "
                                                        r"not a readable HDF5 file \(truncated"):
        zoo.load("nin", weights=str(h5), width=0.25)
    archive = files / "truncated_nin_narrow.keras"
    with pytest.raises(weights_lib.WeightsError, match=rf"^{re.escape(str(archive))} is not a "
                                                        r"valid \.keras archive \(not a zip file\)"):
        zoo.check_weights("nin", str(archive))


def test_another_models_weights_name_the_layer_and_shapes_without_values(files):
    h5 = files / "nin_narrow.weights.h5"
    with pytest.raises(ValueError) as e:
        zoo.load("nin", weights=str(h5), input_shape=(28, 28, 1))
    message = str(e.value)
    assert message == (f"weights file {h5} does not match model 'nin': 17 layers could not be "
                       "loaded; conv1a/kernel expects shape (5, 5, 1, 192), the file has "
                       "(5, 5, 1, 48)")
    with pytest.raises(ValueError) as e:
        zoo.load("resnet20", weights=str(h5), input_shape=(28, 28, 1))
    assert str(e.value).startswith(f"weights file {h5} does not match model 'resnet20': ")
    assert "\n" not in str(e.value) and len(str(e.value)) < 400
    archive = files / "nin_narrow.keras"
    with pytest.raises(ValueError, match=re.escape(
            f"model file {archive} does not match model 'nin': layer 'conv1a' expects weight "
            "shapes [(5, 5, 1, 192), (192,)], the file has [(5, 5, 1, 48), (48,)]")):
        zoo.load("nin", weights=str(archive), input_shape=(28, 28, 1))
    with pytest.raises(ValueError, match=rf"model file {re.escape(str(archive))} does not match "
                                         r"model 'resnet20': it has no layer conv1, conv1_bn"):
        zoo.load("resnet20", weights=str(archive), input_shape=(28, 28, 1))


def test_matching_files_still_load(files):
    for name in ("nin_narrow.weights.h5", "nin_narrow.keras"):
        model = zoo.load("nin", weights=str(files / name), input_shape=(28, 28, 1), width=0.25)
        assert model.get_layer("conv1a").kernel.shape == (5, 5, 1, 48)


@pytest.mark.parametrize("width", [0, -0.5, float("nan"), "1"])
def test_width_multipliers_must_be_positive(width):
    for name in ("nin_root8", "resnet20_root4", "unet3d"):
        with pytest.raises(ValueError, match=re.escape(f"width must be a positive multiplier "
                                                       f"such as 0.5, received width={width!r}")):
            zoo.load(name, width=width)


def test_unet3d_root_widths_must_divide_into_groups():
    with pytest.raises(ValueError, match=re.escape(
            "widths=(8, 6): width 6 is not divisible by groups=4 (root convs split")):
        zoo.load("unet3d_root", input_shape=(16, 16, 16, 4), widths=(8, 6))


def test_unet3d_widths_are_used_as_given_and_multipliers_round_to_groups():
    full = zoo.load("unet3d", input_shape=(16, 16, 16, 2), classes=2, widths=(6, 10))
    assert full.get_layer("enc0_conv2").kernel.shape[-1] == 6
    assert full.get_layer("enc1_conv2").kernel.shape[-1] == 10
    root = zoo.load("unet3d_root", input_shape=(16, 16, 16, 2), classes=2, widths=(8, 16))
    for name in ("enc1_conv1", "enc1_conv2", "dec0_conv1", "dec0_conv2"):
        assert root.get_layer(name).groups == 4  # never silently 1
    assert unet3d.level_widths(unet3d.UNet3DConfig("root", widths=(16, 32, 64)), 1 / 3) == [4, 12, 20]
    assert unet3d.level_widths(unet3d.UNet3DConfig("lowrank", widths=(16, 32)), 0.5) == [8, 16]
    with pytest.raises(ValueError, match=r"widths must be positive integers, one per level, "
                                         r"received widths=\(8, 0\)"):
        unet3d.level_widths(unet3d.UNet3DConfig("full", widths=(8, 0)))
    with pytest.raises(ValueError, match="norm must be 'batch' or 'instance', received norm='layer'"):
        zoo.load("unet3d", input_shape=(16, 16, 16, 2), widths=(4, 8), norm="layer")


def test_the_shipped_segmentation_weights_still_load():
    model = zoo.load("unet3d_lowrank", weights="synthetic_brats")
    x = np.zeros((1, 48, 48, 48, 4), "float32")
    assert model.predict(x, verbose=0).shape == (1, 48, 48, 48, 3)
