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
    assert code == 2 and "nin_root8 has no weights 'imagenet' (available: fashion_mnist)" in err
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


def test_bench_layers_quick(capsys):
    code, out, _ = run(capsys, "bench", "layers", "--quick")
    assert code == 0 and "| RootConv2D g=4" in out and "auto within 10% of best" in out


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
