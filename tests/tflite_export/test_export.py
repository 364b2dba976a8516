"""export(): every quantization mode on a shipped Fashion-MNIST model, with the report's
fields checked against the real .tflite; int8 agreement on real test images; bad input."""

import json

import keras
import numpy as np
import pytest

from keras_priors import data, tflite_export, zoo
from keras_priors.tflite_export import calibration, edgetpu
from keras_priors.zoo import imagenet

NAME, TAG = "nin_root8", "fashion_mnist"


@pytest.fixture(scope="module")
def fashion():
    """Real Fashion-MNIST: 100 training images to calibrate, 300 test images to verify
    (preprocessed as the shipped weights expect)."""
    fm = data.fashion_mnist(limit_train=100, limit_test=300)
    pre = lambda x: imagenet.preprocess_input(x, "fashion_mnist")  # noqa: E731
    return pre(fm.arrays["train"][0]), pre(fm.arrays["test"][0])


@pytest.fixture(scope="module")
def model():
    return zoo.load(NAME, weights=TAG)


@pytest.fixture(scope="module")
def exports(tmp_path_factory, model, fashion):
    """One export per quantization mode (shared by the tests below)."""
    calib, test = fashion
    out = tmp_path_factory.mktemp("exports")
    reports = {}
    for q in tflite_export.QUANTIZATIONS:
        reports[q] = tflite_export.export(
            model, out / f"{NAME}_{q}.tflite", quantization=q,
            representative_data=calib if q == "int8" else None,
            verify_data=test if q == "int8" else test[:32], verify_samples=300,
            latency_repeats=5)
    return reports


def _tensors(report):
    return edgetpu.read_model(report.output)


def test_fp32_agrees_within_1e4_and_report_matches_the_file(exports):
    r = exports["none"]
    assert r.agreement["relative_error"] <= 1e-4 and r.agreement["passed"]
    assert r.agreement["top1_agreement"] == 1.0 and r.agreement["examples"] == 32
    with open(r.output, "rb") as f:
        assert len(f.read()) == r.file_size_bytes
    m = _tensors(r)
    assert r.ops == {op: sum(1 for o in m["ops"] if o["op"] == op) for op in r.ops}
    assert r.ops["CONV_2D"] == 9 and "DEQUANTIZE" not in r.ops
    assert set(r.tensor_dtypes) == {"float32", "int32"} and r.float_tensors
    assert r.tflite_input_shape == [1, 28, 28, 1] and r.io["inputs"][0]["dtype"] == "float32"
    assert r.converter["supported_ops"] == ["TFLITE_BUILTINS"]
    assert r.latency_ms["1"] > 0 and r.latency_ms["2"] > 0 and r.latency_ms["repeats"] == 5
    saved = json.loads(open(r.output[:-len(".tflite")] + ".json").read())
    assert saved["ops"] == r.ops and saved["file_size_bytes"] == r.file_size_bytes
    text = open(r.output[:-len(".tflite")] + ".md").read()
    assert "## Ops" in text and "edgetpu_compiler was not run (not found on PATH)" in text
    # float tensors never map: the predicted partition puts everything on the CPU
    assert r.edgetpu["partition"]["edgetpu_ops"] == 0 and not r.edgetpu["compatible"]


def test_fp16_stores_float16_weights(exports):
    r, fp32 = exports["fp16"], exports["none"]
    assert r.tensor_dtypes.get("float16", 0) >= 9 and r.ops["DEQUANTIZE"] >= 9
    assert r.converter["supported_types"] == ["float16"]
    assert r.file_size_bytes < 0.7 * fp32.file_size_bytes
    assert r.agreement["relative_error"] < 1e-2 and r.agreement["top1_agreement"] == 1.0


def test_dynamic_range_has_int8_weights_float_activations(exports):
    r, fp32 = exports["dynamic"], exports["none"]
    # the converter leaves tiny kernels (under 1024 weights: the last 1x1 conv, 64 x 10) float
    assert r.tensor_dtypes["int8"] >= 8 and r.tensor_dtypes["float32"] > 0
    assert "representative_dataset" in r.converter and not r.converter["representative_dataset"]
    assert r.file_size_bytes < 0.5 * fp32.file_size_bytes
    assert r.agreement["top1_agreement"] >= 0.95


def test_int8_is_fully_integer_and_agrees_on_real_fashion_mnist(exports):
    r = exports["int8"]
    assert r.float_tensors == [] and set(r.tensor_dtypes) == {"int8", "int32"}
    m = _tensors(r)
    for op in m["ops"]:  # activations int8; int32 only as biases or constant operands
        for pos, t in enumerate(op["inputs"]):
            dtype, kind = m["tensors"][t]["dtype"], m["tensors"][t]["kind"]
            assert dtype == "int8" or (dtype == "int32" and kind == "constant"), (op, pos)
        assert all(m["tensors"][t]["dtype"] == "int8" for t in op["outputs"])
    biases = [m["tensors"][o["inputs"][2]]["dtype"] for o in m["ops"] if o["op"] == "CONV_2D"
              and len(o["inputs"]) > 2]
    assert biases and set(biases) == {"int32"}
    assert r.io["inputs"][0]["dtype"] == "int8" and r.io["outputs"][0]["dtype"] == "int8"
    assert r.io["inputs"][0]["scale"] > 0
    a = r.agreement
    assert a["examples"] == 300 and a["top1_agreement"] >= 0.99, a
    assert a["top1_agreement_ties"] >= a["top1_agreement"] and a["passed"]
    assert r.calibration["examples"] == 100
    assert r.file_size_bytes < 0.5 * exports["none"].file_size_bytes


def test_int8_uint8_io_and_calibration_by_name(tmp_path):
    r = tflite_export.export(NAME, tmp_path / "u8.tflite", quantization="int8",
                             representative_data="fashion_mnist", weights=TAG,
                             io_dtype="uint8", calibration_samples=20, verify_samples=20,
                             latency=False)
    assert r.io["inputs"][0]["dtype"] == "uint8" and r.io["outputs"][0]["dtype"] == "uint8"
    assert r.calibration == {"source": "fashion_mnist", "examples": 20,
                             "preprocessing": "fashion_mnist"}
    assert r.source == f"{NAME} (weights {TAG})" and r.latency_ms is None
    assert r.agreement["top1_agreement"] >= 0.95


def test_source_model_is_unchanged(tmp_path, fashion):
    model = zoo.load(NAME, weights=TAG)
    before = [w.copy() for w in model.get_weights()]
    n_layers = len(model.layers)
    tflite_export.export(model, tmp_path / "m.tflite", quantization="int8",
                         representative_data=fashion[0][:20], verify_samples=4, latency=False)
    after = model.get_weights()
    assert len(before) == len(after) and len(model.layers) == n_layers
    for a, b in zip(before, after):
        np.testing.assert_array_equal(a, b)
    assert model.input_shape == (None, 28, 28, 1)


def test_keras_file_and_plain_keras_model(tmp_path):
    inp = keras.Input((12, 12, 3))
    x = keras.layers.Conv2D(4, 3, activation="relu")(inp)
    x = keras.layers.GlobalAveragePooling2D()(x)
    m = keras.Model(inp, keras.layers.Dense(3, activation="softmax")(x))
    path = tmp_path / "tiny.keras"
    m.save(path)
    r = tflite_export.export(str(path), tmp_path / "tiny.tflite", latency=False)
    assert r.source == str(path) and r.agreement["passed"]
    assert "agreement measured on random normal inputs (no data given)" in r.notes
    assert r.ops["FULLY_CONNECTED"] == 1


@pytest.mark.parametrize("kwargs, error, match", [
    ({"quantization": "int4"}, ValueError, r"quantization='int4' is not one of"),
    ({"quantization": "int9"}, ValueError, r"Did you mean 'int8'"),
    ({"target": "tpu"}, ValueError, r"target='tpu' is not one of \['cpu', 'edgetpu'\]"),
    ({"target": "edgetpu"}, ValueError, r"target='edgetpu' needs quantization='int8'.*'none'"),
    ({"quantization": "int8"}, ValueError, r"needs representative_data"),
    ({"io_dtype": "int16"}, ValueError, r"io_dtype='int16'"),
])
def test_bad_arguments(tmp_path, model, kwargs, error, match):
    with pytest.raises(error, match=match):
        tflite_export.export(model, tmp_path / "x.tflite", **kwargs)
    assert not (tmp_path / "x.tflite").exists()


def test_representative_data_of_wrong_shape_names_both_shapes(tmp_path, model):
    wrong = np.zeros((5, 32, 32, 3), np.float32)
    with pytest.raises(ValueError, match=r"shape \(5, 32, 32, 3\).*expects batches of shape "
                                         r"\(N, 28, 28, 1\)"):
        tflite_export.export(model, tmp_path / "x.tflite", quantization="int8",
                             representative_data=wrong)
    with pytest.raises(ValueError, match=r"shape \(28, 28\)"):
        calibration.check_array(np.zeros((28, 28)), (28, 28, 1))
    assert not (tmp_path / "x.tflite").exists()


def test_existing_output_needs_force(tmp_path):
    inp = keras.Input((8, 8, 1))
    m = keras.Model(inp, keras.layers.Conv2D(2, 3)(inp))
    out = tmp_path / "m.tflite"
    out.write_bytes(b"keep me")
    with pytest.raises(FileExistsError, match=str(out)):
        tflite_export.export(m, out, verify=False)
    assert out.read_bytes() == b"keep me"
    r = tflite_export.export(m, out, verify=False, force=True)
    assert out.read_bytes()[4:8] == b"TFL3" and r.agreement is None
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left


def test_calibration_from_an_image_folder(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(5):
        Image.fromarray(rng.integers(0, 255, (40, 30, 3), dtype=np.uint8)).save(
            tmp_path / f"{i}.png")
    x = calibration.representative_array(str(tmp_path), (28, 28, 1), samples=3,
                                         preprocessing="fashion_mnist")
    assert x.shape == (3, 28, 28, 1) and x.dtype == np.float32
    assert -1.0 < x.min() and x.max() < 2.1  # (x/255 - 0.286) / 0.353
    rgb = calibration.representative_array(str(tmp_path), (16, 16, 3), samples=10)
    assert rgb.shape == (5, 16, 16, 3) and rgb.max() > 100  # "none": pixels as they are


def test_lowered_3d_unet_exports_fully_integer_for_the_edgetpu(tmp_path):
    """Synthetic volumes (no real scans in the test data): the lowering lays the volume out
    as rows, the int8 .tflite maps entirely, and the report maps the layout back."""
    net = zoo.load("unet3d_lowrank", input_shape=(16, 16, 16, 4), classes=3, widths=(8, 16),
                   norm="batch")
    x = np.random.default_rng(0).normal(size=(4, 16, 16, 16, 4)).astype(np.float32)
    r = tflite_export.export(net, tmp_path / "u.tflite", quantization="int8",
                             representative_data=x, target="edgetpu", latency=False)
    assert r.input_layout == "volume_as_rows" and r.tflite_input_shape == [1, 256, 16, 4]
    assert "CONV_3D" not in r.ops and r.float_tensors == []
    assert r.edgetpu["compatible"] and r.edgetpu["partition"]["cpu_ops"] == 0
    assert r.lowering["applied"] and r.lowering["unsupported"] == []
    assert r.agreement["task"] == "segmentation" and r.agreement["label_map"] == "> 0.5"
    assert len(r.agreement["dice_per_channel"]) == 3


def test_calibration_patches_from_nifti_cases(tmp_path):
    """Synthetic BraTS cases on real anatomy (keras_priors.volumetric.synthetic): patches of
    the model's input size from z-scored volumes; a channel mismatch is named."""
    from keras_priors.volumetric import synthetic

    synthetic.write_cases(tmp_path, n=1, downsample=4, anatomies=synthetic.ANATOMIES[:1])
    x = calibration.representative_array(str(tmp_path), (16, 16, 16, 4), samples=3)
    assert x.shape == (3, 16, 16, 16, 4) and x.dtype == np.float32
    assert abs(float(x[x != 0].mean())) < 1.0 and float(x.std()) > 0.1  # z-scored, not raw
    with pytest.raises(ValueError, match=r"have 4 channel\(s\), the model expects 2"):
        calibration.representative_array(str(tmp_path), (16, 16, 16, 2), samples=2)
    with pytest.raises(ValueError, match="holds NIfTI volumes"):
        calibration.representative_array(str(tmp_path), (28, 28, 1), samples=2)


def test_calibration_from_a_tfds_name_goes_through_the_data_sources(monkeypatch):
    """No tfds dataset is prepared here: a stand-in for keras_priors.data.sources.tfds_dataset
    returns real Fashion-MNIST images, to check the resize / channel / preprocessing glue."""
    from keras_priors.data import sources

    real = data.fashion_mnist(limit_train=6, limit_test=1)
    seen = {}

    def fake(name, data_dir=None, limit_train=None, limit_test=None):
        seen.update(name=name, limit_train=limit_train)
        return real

    monkeypatch.setattr(sources, "tfds_dataset", fake)
    x = calibration.representative_array("tfds:fashion_mnist", (32, 32, 3), samples=4,
                                         preprocessing="unit")
    assert seen == {"name": "fashion_mnist", "limit_train": 4}
    assert x.shape == (4, 32, 32, 3) and 0.0 <= x.min() and x.max() <= 1.0
    np.testing.assert_allclose(x[..., 0], x[..., 2])  # grey repeated into RGB


def test_compare_counts_ties_and_scores_label_maps():
    from keras_priors.tflite_export import verify

    ref = np.array([[0.1, 0.5, 0.4], [0.7, 0.2, 0.1], [0.2, 0.3, 0.5]])
    cand = np.array([[0.45, 0.45, 0.1], [0.7, 0.2, 0.1], [0.5, 0.3, 0.2]])  # a tie, a miss
    a = verify.compare(ref, cand, "int8")
    assert a["top1_agreement"] == pytest.approx(1 / 3) and a["tied_top1"] == 1
    assert a["top1_agreement_ties"] == pytest.approx(2 / 3) and not a["passed"]
    seg = np.zeros((1, 4, 4, 4, 1))
    seg[0, :2] = 0.9
    other = seg.copy()
    other[0, 0] = 0.1  # half the foreground lost: Dice 2 * 16 / (32 + 16)
    d = verify.compare(seg, other, "int8")
    assert d["task"] == "segmentation" and d["label_map"] == "> 0.5"
    assert d["dice"] == pytest.approx(2 / 3)
    q = {"dtype": np.int8, "quantization": (0.5, -3), "name": "x"}
    np.testing.assert_array_equal(verify.quantize([0.0, 1.0, 1000.0], q), [-3, -1, 127])
    np.testing.assert_allclose(verify.dequantize(np.array([-3, -1], np.int8), q), [0.0, 1.0])
