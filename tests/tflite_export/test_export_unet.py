"""export() of 3D U-Nets: instance norm to full int8 for the Edge TPU, 3D models for the
CPU, and the int8 quality of the shipped synthetic_brats model on lesion-centred patches."""

import time

import numpy as np
import pytest

from keras_priors import tflite_export, zoo
from keras_priors.tflite_export import convert, edgetpu

pytestmark = pytest.mark.filterwarnings("ignore:Statistics for quantized inputs")


def _tiny(name="unet3d_lowrank", norm="instance", size=8, channels=2):
    return zoo.load(name, input_shape=(size, size, size, channels), classes=3, widths=(4, 8),
                    norm=norm)


def test_instance_norm_unet_is_fully_int8_on_the_edgetpu_table(tmp_path):
    net = _tiny()
    x = np.random.default_rng(0).normal(size=(6, 8, 8, 8, 2)).astype(np.float32)
    r = tflite_export.export(net, tmp_path / "u.tflite", quantization="int8",
                             representative_data=x, target="edgetpu", latency=False)
    m = edgetpu.read_model(r.output)
    assert {op["op"] for op in m["ops"]} <= set(edgetpu.SUPPORTED_OPS)
    assert {"MEAN", "SUB", "RSQRT"} <= set(r.ops) and not {"NEG", "SQUARE"} & set(r.ops)
    for op in m["ops"]:
        for pos, t in enumerate(op["inputs"]):
            tensor = m["tensors"][t]
            if tensor["dtype"] == "int32":  # conv biases, constant shapes / axes only
                assert tensor["kind"] == "constant", (op["op"], tensor["name"])
                assert (op["op"], pos) == ("CONV_2D", 2) or op["op"] in (
                    "RESHAPE", "MEAN", "PAD", "STRIDED_SLICE"), (op["op"], pos)
            else:
                assert tensor["dtype"] == "int8", (op["op"], tensor["name"], tensor["dtype"])
        assert all(m["tensors"][t]["dtype"] == "int8" for t in op["outputs"]), op["op"]
    assert r.float_tensors == [] and r.edgetpu["compatible"] and r.edgetpu["tensors"] == []
    assert r.input_layout == "volume_as_rows" and r.lowering["unsupported"] == []
    assert "builtin_norm" in {a["pass"] for a in r.lowering["applied"]}


@pytest.mark.parametrize("name,quantization", [("unet3d", "none"), ("unet3d_lowrank", "int8")])
def test_3d_unet_exports_for_the_cpu(name, quantization, tmp_path):
    net = _tiny(name, norm="batch" if quantization == "none" else "instance")
    x = np.random.default_rng(1).normal(size=(4, 8, 8, 8, 2)).astype(np.float32)
    r = tflite_export.export(net, tmp_path / "u.tflite", quantization=quantization,
                             representative_data=x if quantization == "int8" else None,
                             verify_data=x, latency_repeats=2)
    assert r.input_layout == "volume_as_rows" and r.tflite_input_shape == [1, 64, 8, 2]
    assert "CONV_3D" not in r.ops and r.lowering["unsupported"] == []
    if quantization == "none":
        assert r.agreement["passed"] and r.agreement["relative_error"] <= 1e-4, r.agreement
    else:  # untrained: its sigmoids sit near 0.5, so int8 label-map agreement means nothing
        # here; the trained model's is checked in test_shipped_..._label_maps_agree
        assert r.float_tensors == [] and 0 <= r.agreement["dice"] <= 1
    assert r.latency_ms["1"] > 0


def test_unlowered_3d_pooling_is_a_clear_conversion_error():
    net = _tiny("unet3d", norm="batch", channels=1)
    with pytest.raises(convert.ConversionError, match="MaxPool3D"):
        convert.convert(net)


def test_shipped_synthetic_brats_model_int8_label_maps_agree(tmp_path):
    """The trained unet3d_lowrank (48^3 x 4, sigmoid WT/TC/ET) exported to int8 for the
    Edge TPU, calibrated on NIfTI patches of a synthetic case, against float Keras on
    patches centred on that case's lesion: Dice of the > 0.5 label maps per region."""
    from keras_priors.volumetric import layouts, synthetic
    from keras_priors.volumetric.pipeline import prepare, sample_patch
    from keras_priors.volumetric.prediction import model_for_inference

    start = time.perf_counter()
    net = model_for_inference("unet3d_lowrank", "synthetic_brats")
    synthetic.write_cases(tmp_path / "cases", n=1, seed=7, downsample=2)
    images, y = prepare(layouts.discover(tmp_path / "cases", require_label=True)[0])
    rng = np.random.default_rng(1)
    x = np.stack([sample_patch(images, y, net.input_shape[1:4], rng, foreground=1.0)[0]
                  for _ in range(2)])
    r = tflite_export.export(net, tmp_path / "u.tflite", quantization="int8",
                             target="edgetpu", representative_data=str(tmp_path / "cases"),
                             calibration_samples=20, verify_data=x, latency=False)
    dice = r.agreement["dice_per_channel"]
    print(f"int8 vs float Dice WT/TC/ET {np.round(dice, 4).tolist()}, "
          f"{r.file_size_bytes} bytes, {time.perf_counter() - start:.0f} s")
    assert r.agreement["label_map"] == "> 0.5" and r.agreement["examples"] == 2
    assert min(dice) >= 0.97, dice
    assert r.edgetpu["compatible"] and r.float_tensors == []
