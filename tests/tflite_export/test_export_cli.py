"""`keras-priors export` through keras_priors.tflite_export.cli.main (and one subprocess)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from keras_priors.tflite_export import cli

NAME = "nin_root8"


def _argv(out, *extra):
    return ["export", NAME, str(out), "--weights", "fashion_mnist", *extra]


def test_int8_export_writes_tflite_json_and_markdown(tmp_path, capsys):
    out = tmp_path / "m.tflite"
    rc = cli.main(_argv(out, "--quant", "int8", "--calib", "fashion_mnist",
                        "--calib-samples", "30", "--verify-samples", "10"))
    assert rc == 0
    printed = capsys.readouterr().out
    assert "# Export of nin_root8 (weights fashion_mnist)" in printed
    assert "edgetpu_compiler was not run (not found on PATH)" in printed
    report = json.loads((tmp_path / "m.json").read_text())
    assert report["quantization"] == "int8" and report["calibration"]["examples"] == 30
    assert report["file_size_bytes"] == out.stat().st_size
    assert report["agreement"]["examples"] == 10 and set(report["latency_ms"]) >= {"1", "2"}
    assert (tmp_path / "m.md").read_text().startswith("# Export of nin_root8")


def test_existing_output_is_refused_then_replaced_with_force(tmp_path, capsys):
    out = tmp_path / "m.tflite"
    report = tmp_path / "custom_report.json"
    assert cli.main(_argv(out, "--no-verify", "--report", str(report))) == 0
    assert report.is_file() and (tmp_path / "custom_report.md").is_file()
    capsys.readouterr()
    assert cli.main(_argv(out, "--no-verify", "--report", str(report))) == 2
    assert f"{out} already exists" in capsys.readouterr().err
    assert cli.main(_argv(out, "--no-verify", "--report", str(report), "--force")) == 0


@pytest.mark.parametrize("report, message", [
    ("m.tflite", "the report path '{d}/m.tflite' (--report) would overwrite the model "
                 "'{d}/m.tflite'; give the JSON report a path of its own, ending with .json"),
    ("m.md", "the report path '{d}/m.md' (--report) would overwrite its own Markdown summary "
             "'{d}/m.md'; give the JSON report a path of its own, ending with .json"),
])
def test_report_path_that_would_overwrite_an_output_is_refused(tmp_path, capsys, report,
                                                                message):
    out = tmp_path / "m.tflite"
    out.write_bytes(b"keep")  # even with --force, nothing is converted or replaced
    rc = cli.main(_argv(out, "--no-verify", "--force", "--report", str(tmp_path / report)))
    assert rc == 2
    assert capsys.readouterr().err.strip() == "error: " + message.format(d=tmp_path)
    assert out.read_bytes() == b"keep" and sorted(os.listdir(tmp_path)) == ["m.tflite"]


def test_existing_report_or_summary_needs_force(tmp_path, capsys):
    for existing in ("r.json", "r.md"):
        (tmp_path / existing).write_text("mine")
        rc = cli.main(_argv(tmp_path / "m.tflite", "--no-verify", "--report",
                            str(tmp_path / "r.json")))
        assert rc == 2
        assert f"{tmp_path / existing} already exists" in capsys.readouterr().err
        assert (tmp_path / existing).read_text() == "mine"
        assert not (tmp_path / "m.tflite").exists()
        (tmp_path / existing).unlink()


@pytest.mark.parametrize("extra, message", [
    (["--target", "edgetpu"], "target='edgetpu' needs quantization='int8'"),
    (["--io-dtype", "uint8"], "io_dtype='uint8' (--io-dtype) applies to quantization='int8' "
                              "only; a 'none' model keeps float32 inputs and outputs"),
    (["--verify-data", "fashion_mnist", "--no-verify"],
     "verify_data (--verify-data) is given but verify=False (--no-verify) skips the "
     "agreement check that would use it"),
    (["--quant", "int8"], "needs representative_data"),
])
def test_bad_combinations_exit_2_with_a_message(tmp_path, capsys, extra, message):
    assert cli.main(_argv(tmp_path / "m.tflite", *extra)) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "m.tflite").exists()


def test_wrong_shape_calibration_file_names_both_shapes(tmp_path, capsys):
    npy = tmp_path / "calib.npy"
    np.save(npy, np.zeros((4, 32, 32, 3), np.float32))
    rc = cli.main(_argv(tmp_path / "m.tflite", "--quant", "int8", "--calib", str(npy)))
    err = capsys.readouterr().err
    assert rc == 2 and "(4, 32, 32, 3)" in err and "(N, 28, 28, 1)" in err


def test_unknown_choices_are_argparse_errors(tmp_path):
    for extra in (["--quant", "int4"], ["--target", "gpu"]):
        with pytest.raises(SystemExit) as e:
            cli.main(_argv(tmp_path / "m.tflite", *extra))
        assert e.value.code == 2


def test_module_entry_point_runs(tmp_path):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    out = tmp_path / "tiny.tflite"
    proc = subprocess.run(
        [sys.executable, "-m", "keras_priors.tflite_export.cli", "export", "resnet20_root4",
         str(out), "--input-shape", "16,16,3", "--quant", "fp16", "--no-verify"],
        capture_output=True, text=True, env=env, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((tmp_path / "tiny.json").read_text())
    assert report["input_shape"] == [16, 16, 3] and report["tensor_dtypes"]["float16"] > 0


@pytest.mark.parametrize("extra, message", [
    (["--verify-samples", "0"], "verify_samples (--verify-samples) must be a positive integer, "
                                "received 0"),
    (["--calib-samples", "-5", "--quant", "int8", "--calib", "fashion_mnist"],
     "calibration_samples (--calib-samples) must be a positive integer, received -5"),
])
def test_sample_counts_must_be_positive(tmp_path, capsys, extra, message):
    assert cli.main(_argv(tmp_path / "m.tflite", *extra)) == 2
    assert capsys.readouterr().err.strip() == f"error: {message}"
    assert os.listdir(tmp_path) == []


def test_zoo_options_on_a_saved_model_are_refused(tmp_path, capsys):
    import keras

    inp = keras.Input((8, 8, 1))
    path = tmp_path / "tiny.keras"
    keras.Model(inp, keras.layers.Conv2D(2, 3)(inp)).save(path)
    argv = ["export", str(path), str(tmp_path / "t.tflite"), "--input-shape", "16,16,1",
            "--width", "0.5", "--no-verify"]
    assert cli.main(argv) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: input_shape, width apply to zoo names only; '{path}' is a saved model, "
        "exported as it is")
    assert sorted(os.listdir(tmp_path)) == ["tiny.keras"]
