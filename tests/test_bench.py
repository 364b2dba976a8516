"""The model benchmark in its tiny smoke mode: every column measured, targets marked, JSON
written and compared (no assertions on time: the numbers are the benchmark's output)."""

import json

from keras_priors import cli
from keras_priors.bench import models


def test_bench_models_smoke(capsys, tmp_path):
    saved = tmp_path / "bench.json"
    assert cli.main(["bench", "--quick", "--json", str(saved)]) == 0
    out = capsys.readouterr().out
    results = json.loads(saved.read_text())
    for pair in models.SIZES["smoke"]:
        for name in pair.structured:
            assert f"| {name} " in out
    row = results["models"]["unet3d_lowrank"]
    for key in ("macs", "params", "infer_bs1", "train", "tflite_fp32_t1", "tflite_fp32_t2",
                "tflite_int8_t1", "tflite_int8_t2", "tflite_int8_bytes", "peak_training_mb"):
        assert row[key] > 0, key
    assert row["macs"] < results["models"]["unet3d"]["macs"]
    assert set(results["targets"]) == {"tflite_int8", "keras", "memory", "import"}
    assert isinstance(results["targets"]["memory"]["unet3d_lowrank"], bool)
    assert "targets met" in out and "Import: keras" in out

    text = models.compare(results, results)
    assert "| nin_root8 " in text and "+0.00" in text  # a run compared with itself


def test_bench_only_names_known_pairs():
    import pytest

    with pytest.raises(ValueError, match=r"only=\['vgg'\] matches no pair of size 'smoke'"):
        models.run("smoke", only=["vgg"])


def test_bench_cli_only_runs_those_pairs(capsys, tmp_path):
    saved = tmp_path / "unet.json"
    assert cli.main(["bench", "--quick", "--only", "unet3d", "--no-tflite", "--no-memory",
                     "--json", str(saved)]) == 0
    out = capsys.readouterr().out
    assert "| unet3d_lowrank " in out and "nin_root8" not in out
    assert set(json.loads(saved.read_text())["models"]) == {"unet3d", "unet3d_lowrank"}


def test_floor_model_keeps_shapes_and_first_conv():
    from keras_priors import zoo
    from keras_priors.bench.floor import floor_model
    from keras_priors.complexity import profile

    net = zoo.load("unet3d", input_shape=(16, 16, 16, 2), classes=2, widths=(4, 8))
    low = floor_model(net)
    kernels = [tuple(layer.kernel_size) for layer in low.layers if hasattr(layer, "kernel_size")]
    assert kernels[0] == (3, 3, 3) and set(kernels[1:]) == {(1, 1, 1)}
    assert low.output_shape == net.output_shape
    assert profile(low, verbose=False).total_macs < 0.3 * profile(net, verbose=False).total_macs


def _floor_results(floor_ratio, macs_ratio=0.5):
    """Results of one pair: the baseline at 10 ms everywhere, the structured model at its MACs
    ratio, the floor at `floor_ratio` of the baseline."""
    keys = ("infer_bs1", "infer_bs4", "train", "tflite_int8_t1")
    row = lambda macs, t: {"macs": macs, **{k: t for k in keys}}  # noqa: E731
    return {"pairs": [{"baseline": "net", "structured": ["net_root"], "batches": [1, 4]}],
            "models": {"net": row(100, 10.0), "net_root": row(100 * macs_ratio, 6.0),
                       "net_floor": row(100, 10.0 * floor_ratio)}}


def _row(table, model):
    """The stripped cells of `model`'s row of a markdown table."""
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) > 1 and cells[1] == model:
            return cells
    raise AssertionError(f"no row for {model} in\n{table}")


def test_floor_verdict_says_whether_the_targets_lie_above_the_floor():
    from keras_priors.bench import floor

    # MACs ratio 0.5: Keras target 1.25 x 0.5 = 0.625, int8 target 1.1 x 0.5 = 0.55
    ratios = ["0.50", "0.60", "0.60", "0.60", "0.60"]
    for floor_ratio, verdict in ((0.5, "keras yes, int8 yes"), (0.6, "keras yes, int8 NO"),
                                 (0.7, "keras NO, int8 NO")):
        table = floor.table(_floor_results(floor_ratio))
        assert _row(table, "net_root") == ["net", "net_root", *ratios, verdict]
        assert _row(table, "net_floor")[2:] == ["1.00", *[f"{floor_ratio:.2f}"] * 4, "-"]


def test_bench_floor_cli_smoke(capsys, tmp_path):
    saved = tmp_path / "floor.json"
    assert cli.main(["bench", "floor", "--quick", "--only", "unet3d", "--no-tflite",
                     "--json", str(saved)]) == 0
    out = capsys.readouterr().out
    assert "| unet3d_floor " in out and "| unet3d_lowrank " in out
    got = json.loads(saved.read_text())["models"]
    base, low, lowest = got["unet3d"], got["unet3d_lowrank"], got["unet3d_floor"]
    ok = all(lowest[k] / base[k] <= models.KERAS_FACTOR * low["macs"] / base["macs"]
             for k in ("infer_bs1", "train"))  # the smoke pair has one batch size
    assert _row(out, "unet3d_lowrank")[-1] == f"keras {'yes' if ok else 'NO'}"  # as measured


def test_bench_unet_smoke(capsys, tmp_path):
    """`bench unet --quick`: every row measured in its own process, ratios to unet3d with
    this package's norm, the machine's oneDNN setting recorded."""
    saved = tmp_path / "unet.json"
    assert cli.main(["bench", "unet", "--quick", "--json", str(saved)]) == 0
    out = capsys.readouterr().out
    results = json.loads(saved.read_text())
    rows = [(r["model"], r["recompute"], r["norm"]) for r in results["rows"]]
    assert rows == [("unet3d", None, "keras"), ("unet3d", None, "ours"),
                    ("unet3d_lowrank", False, "keras"), ("unet3d_lowrank", False, "ours"),
                    ("unet3d_lowrank", True, "ours"), ("unet3d_lowrank", "per_sample", "ours"),
                    ("unet3d_root", None, "ours")]
    for r in results["rows"]:  # at 16^3 the peak resident set may not rise by a whole MB
        assert r["memory_mb"] >= 0 and r["step_s"] > 0 and r["infer_s"] > 0 and r["patch"] == 16
    assert "| 16^3 | unet3d | - | ours |" in out and "| 1.00 |" in out
    assert results["machine"]["TF_ENABLE_ONEDNN_OPTS"] in ("0", "1")
    assert {r["precision"] for r in results["rows"]} == {"float32"}
    assert not any("allocator_mb" in r for r in results["rows"])


def test_bench_unet_allocator_peak(capsys, tmp_path):
    """`--allocator-peak`: each row also gives TensorFlow's allocator peak during a step,
    which a training step must raise (it holds the activations); `--no-keras-norm` drops
    the two rows with Keras' own norm."""
    saved = tmp_path / "unet.json"
    assert cli.main(["bench", "unet", "--quick", "--allocator-peak", "--no-keras-norm",
                     "--json", str(saved)]) == 0
    rows = json.loads(saved.read_text())["rows"]
    assert [r["norm"] for r in rows] == ["ours"] * 5
    assert all(r["allocator_mb"] > 0 for r in rows)
    assert "allocator peak MB" in capsys.readouterr().out


def test_bench_unet_row_under_mixed_bfloat16():
    """`bench unet --mixed-precision` rows: the default (recomputing) low-rank U-Net
    trains under mixed_bfloat16 in its own process."""
    from keras_priors.bench import unet

    row = unet.measure("unet3d_lowrank", True, "ours", 16, [4, 8], 1, mixed=True)
    assert row["step_s"] > 0 and row["infer_s"] > 0


def test_bench_train_smoke(capsys, tmp_path):
    out = tmp_path / "train.json"
    assert cli.main(["bench", "train", "--quick", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["variant"] for r in rows] == ["fp32", "bf16", "pipeline"]
    assert all(r["step_ms"] > 0 and r["images_per_s"] > 0 for r in rows)
    assert "| nin_root8 | 0.33 | bf16 |" in capsys.readouterr().out
    assert cli.main(["bench", "unet", "--models", "nin"]) == 2  # --models is bench train's
