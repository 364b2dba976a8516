"""Edge TPU rules on small hand-made models: float ops, tensors with 4 dimensions larger
than 1, ops outside the table, grouped convs, the partition point, the compiler hook."""

import os
import stat

import keras
import numpy as np
import pytest

from keras_priors import tflite_export
from keras_priors.tflite_export import calibration, edgetpu
from keras_priors.tflite_export.convert import convert

L = keras.layers


def _int8(model, n=8):
    """Full-integer flatbuffer of `model` calibrated on random normal data (synthetic: the
    rules checked here do not depend on the values)."""
    shape = model.input_shape[1:]
    x = np.random.default_rng(0).normal(size=(n,) + shape).astype(np.float32)
    return convert(model, "int8", calibration.generator(x))


def _model(inp, out):
    return keras.Model(inp, out)


def test_table_is_data_with_documented_restrictions():
    ops = edgetpu.SUPPORTED_OPS
    assert {"CONV_2D", "DEPTHWISE_CONV_2D", "CONCATENATION", "SPLIT", "STRIDED_SLICE",
            "RESHAPE", "PAD", "ADD", "MUL", "MEAN", "MAX_POOL_2D", "AVERAGE_POOL_2D",
            "FULLY_CONNECTED", "LOGISTIC", "SOFTMAX"} <= set(ops)
    assert "CONV_3D" not in ops and "DEQUANTIZE" not in ops and "LEAKY_RELU" not in ops
    assert "16,000" in ops["SOFTMAX"][1] and "dilation" in ops["CONV_2D"][1]
    table = edgetpu.table_markdown()
    assert table.count("\n") == len(ops) + 1 and "| CONV_2D | Conv2d |" in table
    assert edgetpu.SOURCE.startswith("https://coral.ai/docs/edgetpu/models-intro")


def test_float_model_is_reported_and_refused():
    inp = keras.Input((8, 8, 3))
    m = _model(inp, L.Conv2D(4, 3)(inp))
    content = convert(m, "none")
    report = edgetpu.check(model_content=content)
    assert not report["compatible"] and report["partition"]["edgetpu_ops"] == 0
    problems = " ".join(v["problem"] for v in report["tensors"])
    assert "is float32 (must be int8/uint8)" in problems
    assert report["float_ops"][0]["op"] == "CONV_2D"
    with pytest.raises(tflite_export.EdgeTPUError, match=r"op 0 CONV_2D: float tensors"):
        edgetpu.require_integer(model_content=content)


def test_float_section_after_int8_conversion_fails_the_edgetpu_export(tmp_path, monkeypatch):
    """Conv3D stays float between DEQUANTIZE and QUANTIZE under BUILTINS_INT8; without a
    lowering pass the Edge TPU export must stop and name the ops."""
    from keras_priors.tflite_export import lowering

    monkeypatch.setattr(lowering, "lower",
                        lambda model, target, batch_size: lowering.Lowered(model))
    inp = keras.Input((4, 4, 4, 2))
    m = _model(inp, L.Conv3D(4, 3, padding="same")(inp))
    x = np.random.default_rng(0).normal(size=(4, 4, 4, 4, 2)).astype(np.float32)
    with pytest.raises(tflite_export.EdgeTPUError, match=r"CONV_3D: float tensors"):
        tflite_export.export(m, tmp_path / "c3.tflite", quantization="int8",
                             representative_data=x, target="edgetpu")
    assert not (tmp_path / "c3.tflite").exists()
    # for the CPU the same file is written, and the report lists the float tensors
    r = tflite_export.export(m, tmp_path / "c3.tflite", quantization="int8",
                             representative_data=x, verify=False)
    assert r.float_tensors and r.ops["CONV_3D"] == 1 and r.ops["DEQUANTIZE"] >= 1
    first = r.edgetpu["partition"]["first_unsupported"]
    assert first["op"] in ("DEQUANTIZE", "CONV_3D", "QUANTIZE")


def test_tensor_with_four_non_unit_dimensions_is_reported_with_the_partition():
    inp = keras.Input((8, 8, 3))
    x = L.Conv2D(4, 3, padding="same", name="conv_a")(inp)
    x = L.Reshape((2, 4, 8, 4))(x)  # [1, 2, 4, 8, 4]: 4 dimensions larger than 1
    x = L.Add()([x, L.ReLU()(x)])  # work on the 5D tensor (two reshapes alone would fold)
    x = L.Reshape((8, 8, 4))(x)
    x = L.Conv2D(4, 3, padding="same", name="conv_b")(x)
    report = edgetpu.check(model_content=_int8(_model(inp, x)))
    ops = [o["op"] for o in report["ops"]]
    bad = [v for v in report["tensors"] if "dimensions larger than 1" in v["problem"]]
    assert bad and "[1, 2, 4, 8, 4] has 4 dimensions larger than 1 (max 3)" in bad[0]["problem"]
    cut = report["partition"]["first_unsupported"]
    assert cut["op"] == "RESHAPE" and cut["index"] == ops.index("RESHAPE")
    assert report["partition"]["edgetpu_ops"] == cut["index"] >= 1  # conv_a maps
    assert report["ops"][0]["op"] == "CONV_2D" and report["ops"][0]["device"] == "edgetpu"


def test_partition_cuts_at_the_first_unsupported_op():
    inp = keras.Input((8, 8, 3))
    x = L.Conv2D(8, 3, padding="same", activation="relu")(inp)
    x = L.LeakyReLU(0.1)(x)  # LEAKY_RELU is not in the Edge TPU table
    x = L.Conv2D(8, 3, padding="same", activation="relu")(x)
    x = L.GlobalAveragePooling2D()(x)
    x = L.Dense(4)(x)
    report = edgetpu.check(model_content=_int8(_model(inp, x)))
    ops = [o["op"] for o in report["ops"]]
    i = ops.index("LEAKY_RELU")
    part = report["partition"]
    assert part["first_unsupported"]["index"] == i and part["edgetpu_ops"] == i
    assert part["cpu_ops"] == len(ops) - i
    assert "LEAKY_RELU is not in the Edge TPU supported-op table" in part["summary"]
    after = report["ops"][i + 1:]
    # ops after the cut run on the CPU although they would map on their own
    assert after and all(o["device"] == "cpu" for o in after)
    assert any(o["maps"] for o in after)
    assert all(o["maps"] and o["device"] == "edgetpu" for o in report["ops"][:i])


def test_op_restrictions_softmax_rank_and_grouped_conv():
    inp = keras.Input((4, 4, 8))
    x = L.Conv2D(8, 3, padding="same", groups=2)(inp)  # grouped CONV_2D: not documented
    x = L.Softmax(axis=-1)(x)  # softmax over a [1, 4, 4, 8] tensor: not 1-D
    report = edgetpu.check(model_content=_int8(_model(inp, x)))
    by_op = {o["op"]: o for o in report["ops"]}
    assert any("grouped CONV_2D (groups=2)" in r for r in by_op["CONV_2D"]["reasons"])
    assert any("is not 1-D" in r for r in by_op["SOFTMAX"]["reasons"])


def test_edgetpu_export_lowers_grouped_convs(tmp_path):
    inp = keras.Input((8, 8, 8))
    x = L.Conv2D(8, 3, padding="same", groups=4, activation="relu")(inp)
    x = L.Conv2D(8, 1)(x)
    m = _model(inp, x)
    data = np.random.default_rng(0).normal(size=(8, 8, 8, 8)).astype(np.float32)
    r = tflite_export.export(m, tmp_path / "g.tflite", quantization="int8",
                             representative_data=data, target="edgetpu", latency=False)
    assert any(a["pass"] == "split_groups" for a in r.lowering["applied"])
    assert r.edgetpu["compatible"], r.edgetpu["partition"]
    assert r.ops["CONV_2D"] == 5 and r.float_tensors == []
    assert r.agreement["relative_error"] < 0.1
    # the CPU target keeps the native grouped CONV_2D (XNNPACK runs it) and says why it
    # would not map
    c = tflite_export.export(m, tmp_path / "c.tflite", quantization="int8",
                             representative_data=data, verify=False)
    assert c.ops["CONV_2D"] == 2
    assert "grouped CONV_2D" in c.edgetpu["partition"]["summary"]


def test_compiler_absent_is_said_plainly(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    inp = keras.Input((8, 8, 3))
    report = edgetpu.check(model_content=_int8(_model(inp, L.Conv2D(4, 3)(inp))))
    assert report["compiler"] == {"ran": False, "log": None,
                                  "message": "edgetpu_compiler was not run (not found on PATH)"}
    assert report["compatible"]


def test_compiler_log_is_included_when_found(tmp_path, monkeypatch):
    """A stand-in `edgetpu_compiler` on PATH: its output lands in the report."""
    fake = tmp_path / "bin" / "edgetpu_compiler"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\necho \"Edge TPU Compiler stand-in, args: $*\"\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    inp = keras.Input((8, 8, 3))
    content = _int8(_model(inp, L.Conv2D(4, 3)(inp)))
    report = edgetpu.check(model_content=content)
    assert report["compiler"]["ran"] and report["compiler"]["returncode"] == 0
    assert "Edge TPU Compiler stand-in, args: -s -o" in report["compiler"]["log"]


def test_parameter_cache_is_reported(tmp_path):
    import keras

    from keras_priors import tflite_export

    inputs = keras.Input((8, 8, 4))
    model = keras.Model(inputs, keras.layers.Conv2D(8, 3, padding="same")(inputs))
    rng = np.random.default_rng(0)
    report = tflite_export.export(model, tmp_path / "m.tflite", quantization="int8",
                                  target="edgetpu", verify=False,
                                  representative_data=rng.normal(size=(4, 8, 8, 4)).astype("float32"))
    cache = report.edgetpu["parameter_cache"]
    assert cache["fits"] and 8 * 3 * 3 * 4 <= cache["parameter_bytes"] < 2048
    assert "fit the ~8 MiB on-chip cache" in (tmp_path / "m.md").read_text()
