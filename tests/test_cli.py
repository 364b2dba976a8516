"""The `keras-priors` command line, run in-process (and once as the installed script)."""

import shutil
import subprocess

import keras
import pytest

from keras_priors import cli
from keras_priors.layers import RootConv2D


def run(capsys, *argv):
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_installed_console_script():
    exe = shutil.which("keras-priors")
    assert exe, "the keras-priors console script is not installed"
    done = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.startswith("keras-priors ")


def test_zoo_list_and_info(capsys):
    code, out, _ = run(capsys, "zoo", "list")
    assert code == 0 and "resnet50_root64" in out and "resnet50_root -> resnet50_root64" in out
    code, out, _ = run(capsys, "zoo", "list", "nin_root*")
    assert code == 0 and len(out.strip().splitlines()) == 4
    code, out, _ = run(capsys, "zoo", "info", "resnet50_root")
    assert code == 0
    assert "MACs 2.115 G, params 15.310 M" in out
    assert "this build: MACs 2.115 G" in out and "(15.313 M counted as the paper does)" in out


def test_zoo_errors(capsys):
    code, _, err = run(capsys, "zoo", "info", "resnet50_rot")
    assert code == 2 and "Did you mean 'resnet50_root'" in err
    code, _, err = run(capsys, "zoo", "predict", "nin_root8", "x.png")
    assert code == 2 and "nin_root8 has no weights 'imagenet' (available: fashion_mnist, fashion_mnist_wide)" in err
    code, _, err = run(capsys, "zoo", "predict", "resnet50", "x.png")
    assert code == 2 and "resnet50 has no weights 'imagenet' (available: none)" in err
    with pytest.raises(SystemExit):
        cli.main(["zoo", "profile", "nin", "--input-shape", "28,28"])


def test_zoo_profile(capsys):
    code, out, _ = run(capsys, "zoo", "profile", "nin_root8", "--input-shape", "28,28,1")
    assert code == 0 and "conv2a (RootConv2D)" in out and "8 groups" in out


def test_zoo_predict_real_photo(capsys, tmp_path):
    skdata = pytest.importorskip("skimage.data")
    from PIL import Image

    path = tmp_path / "coffee.png"
    Image.fromarray(skdata.coffee()).save(path)
    code, out, _ = run(capsys, "zoo", "predict", "efficientnet_lite0", str(path), "--top", "3")
    assert code == 0
    assert out.splitlines()[1].split()[1] == "espresso"
    code, _, err = run(capsys, "zoo", "predict", "efficientnet_lite0", str(tmp_path / "none.png"))
    assert code == 2 and "cannot read image" in err


def test_profile_saved_model(capsys, tmp_path):
    inputs = keras.Input((8, 8, 4))
    model = keras.Model(inputs, RootConv2D(8, 3, groups=2, name="root")(inputs))
    model.save(tmp_path / "m.keras")
    code, out, _ = run(capsys, "profile", str(tmp_path / "m.keras"))
    assert code == 0 and "root (RootConv2D)" in out
    assert f"Total params: {model.count_params():,}" in out


def test_bench_layers_quick(capsys, tmp_path):
    import json

    code, out, _ = run(capsys, "bench", "layers", "--quick", "--json", str(tmp_path / "l.json"))
    assert code == 0 and "| RootConv2D g=4" in out and "auto within 10% of best" in out
    assert json.loads((tmp_path / "l.json").read_text())  # --json reaches bench layers


def test_train_and_evaluate_commands(capsys, tmp_path):
    import json

    out = tmp_path / "run"
    argv = ["train", "nin_root8", "--out", str(out), "--epochs", "1", "--width", "0.125",
            "--batch-size", "64", "--limit-train", "256", "--limit-test", "128", "--quiet"]
    code, stdout, _ = run(capsys, *argv)
    assert code == 0 and json.loads(stdout)["epochs"] == 1
    code, _, err = run(capsys, *argv)
    assert code == 2 and "already holds a run" in err
    code, stdout, _ = run(capsys, *argv, "--resume")  # a finished run: reports again
    assert code == 0 and json.loads(stdout)["accuracy"] >= 0
    code, _, err = run(capsys, "evaluate", "nin_root8", "--weights", "nope")
    assert code == 2 and "nor the path of an existing weights file" in err


def test_train_command_with_a_mirrored_strategy(tmp_path):
    import json
    import os
    import subprocess
    import sys

    out = tmp_path / "run"
    argv = [sys.executable, "-m", "keras_priors.cli", "train", "nin_root8", "--out", str(out),
            "--epochs", "1", "--width", "0.125", "--batch-size", "64", "--limit-train", "256",
            "--limit-test", "128", "--quiet", "--strategy", "mirrored", "--logical-cpus", "2"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads((out / "result.json").read_text())
    assert result["epochs"] == 1 and 0 <= result["accuracy"] <= 1


def _one_paragraph(err):
    return err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err


def test_train_limits_of_zero_or_less_are_usage_errors(capsys, tmp_path):
    for flag, value in (("--limit-train", "0"), ("--limit-test", "-5")):
        with pytest.raises(SystemExit) as e:
            cli.main(["train", "nin_root8", "--out", str(tmp_path / "run"), flag, value])
        err = capsys.readouterr().err
        assert e.value.code == 2
        assert err == (f"keras-priors train: error: argument {flag}: expected a positive integer, "
                       f"received '{value}' (see keras-priors train -h)\n")
    assert not (tmp_path / "run").exists()


def test_train_data_that_is_no_folder_or_has_a_corrupt_image(capsys, tmp_path):
    import numpy as np
    from PIL import Image

    missing = tmp_path / "photos"
    code, _, err = run(capsys, "train", "nin_root8", "--out", str(tmp_path / "run"),
                       "--data", str(missing))
    assert code == 2 and _one_paragraph(err)
    assert err.startswith(f"error: --data {missing}: no such folder. Accepted: fashion_mnist, ")
    rng = np.random.default_rng(0)
    for label in ("a", "b"):
        (missing / label).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(
                missing / label / f"{i}.png")
    (missing / "b" / "1.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    code, _, err = run(capsys, "train", "nin_root8", "--out", str(tmp_path / "run"),
                       "--data", str(missing))
    assert code == 2 and _one_paragraph(err)
    assert err.startswith(f"error: unreadable image file: {missing / 'b' / '1.png'} (")
    assert not (tmp_path / "run").exists()


def test_evaluate_and_profile_name_bad_model_files(capsys, tmp_path):
    from keras_priors import zoo

    narrow = zoo.load("nin_root8", input_shape=(28, 28, 1), width=0.25)
    narrow.save_weights(tmp_path / "narrow.weights.h5")
    narrow.save(tmp_path / "narrow.keras")
    for name in ("narrow.weights.h5", "narrow.keras"):
        raw = (tmp_path / name).read_bytes()
        (tmp_path / f"cut_{name}").write_bytes(raw[: len(raw) // 3])

    code, _, err = run(capsys, "evaluate", "nin_root8", "--weights",
                       str(tmp_path / "cut_narrow.weights.h5"))
    assert code == 2 and _one_paragraph(err)
    assert err.startswith(f"error: weights file {tmp_path / 'cut_narrow.weights.h5'} is not a "
                          "readable HDF5 file (truncated")
    code, _, err = run(capsys, "evaluate", "nin_root8", "--weights",
                       str(tmp_path / "narrow.weights.h5"), "--limit-test", "64")
    assert code == 2 and _one_paragraph(err)
    assert err == (f"error: weights file {tmp_path / 'narrow.weights.h5'} does not match model "
                   "'nin_root8': 17 layers could not be loaded; conv1a/kernel expects shape "
                   "(5, 5, 1, 192), the file has (5, 5, 1, 48)\n")

    code, _, err = run(capsys, "profile", str(tmp_path / "cut_narrow.keras"))
    assert code == 2 and _one_paragraph(err)
    assert err == (f"error: {tmp_path / 'cut_narrow.keras'} is not a valid .keras archive (not a "
                   "zip file): it is truncated, corrupt or another format\n")
    code, _, err = run(capsys, "profile", str(tmp_path / "none.keras"))
    assert code == 2 and f"model file {tmp_path / 'none.keras'} does not exist" in err


def test_bench_options_a_benchmark_does_not_take_are_errors(capsys, tmp_path):
    code, _, err = run(capsys, "bench", "layers", "--only", "resnet50")
    assert code == 2 and err == "error: bench layers takes no --only (only bench models and floor do)\n"
    code, _, err = run(capsys, "bench", "floor", "--compare", "old.json")
    assert code == 2 and err == "error: bench floor takes no --compare (only bench models do)\n"
    code, _, err = run(capsys, "bench", "seg", "--only", "unet3d")
    assert code == 2 and err == "error: bench seg takes no --only (only bench models and floor do)\n"
    code, _, err = run(capsys, "bench", "models", "--cases", "4")
    assert code == 2 and err == "error: bench models takes no --cases (only bench seg do)\n"
    code, _, err = run(capsys, "bench", "seg", "--widths", "8", "16")
    assert code == 2 and err == "error: bench seg takes no --widths (only bench unet do)\n"
    code, _, err = run(capsys, "bench", "train", "--mixed-precision")
    assert code == 2 and err == "error: bench train takes no --mixed-precision (only bench unet do)\n"
    code, _, err = run(capsys, "bench", "floor", "--patch", "96")
    assert code == 2 and err == "error: bench floor takes no --patch (only bench seg and unet do)\n"
    code, _, err = run(capsys, "bench", "--quick", "--compare", str(tmp_path / "old.json"))
    assert code == 2 and f"--compare {tmp_path / 'old.json'}: no such file" in err
    (tmp_path / "bad.json").write_text("[1, 2]")
    code, _, err = run(capsys, "bench", "--quick", "--only", "nin", "--compare", str(tmp_path / "bad.json"))
    assert code == 2 and "bad.json is not a saved benchmark JSON (no 'models' and 'pairs')" in err


def test_zoo_predict_top_and_zoo_load_classes_must_be_positive(capsys):
    from keras_priors import zoo

    with pytest.raises(SystemExit) as e:
        cli.main(["zoo", "predict", "efficientnet_lite0", "x.png", "--top", "0"])
    assert e.value.code == 2 and "argument --top: expected a positive integer, received '0'" in (
        capsys.readouterr().err)
    with pytest.raises(ValueError, match="classes must be a positive integer, received classes=0"):
        zoo.load("nin_root8", classes=0)
