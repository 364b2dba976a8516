"""Model benchmark: does structure pay in wall-clock? Baseline vs structured models, side by
side, on Keras TF-CPU (inference at two batch sizes, a training step), the LiteRT interpreter
(fp32 and int8, XNNPACK at 1 and 2 threads) and peak training memory.

    keras-priors bench models [--size full|quick|smoke] [--json out.json] [--compare old.json]

Every time is a median after warm-up, and the models of a pair are timed round-robin so that
machine noise hits them alike: the *ratios* structured / baseline are what count. Peak
memory is the rise of the resident set size during training steps, measured in a fresh
process per model.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .timing import interleaved_median_ms, markdown_table, peak_rss_rise_mb


@dataclass(frozen=True)
class Pair:
    baseline: str
    structured: tuple
    input_shape: tuple
    classes: int = 1000
    options: dict = field(default_factory=dict)  # zoo.load options, e.g. width / widths
    batches: tuple = (1, 32)  # Keras inference batch sizes
    train_batch: int = 16


SIZES = {
    "full": (
        Pair("resnet50", ("resnet50_root8", "resnet50_root16", "resnet50_root64"), (224, 224, 3)),
        Pair("nin", ("nin_root4", "nin_root8", "nin_root16"), (32, 32, 3), 10, train_batch=128),
        Pair("vgg11_gmp", ("vgg11_gmp_lr_join",), (224, 224, 3)),
        Pair("unet3d", ("unet3d_lowrank",), (64, 64, 64, 4), 3, {"widths": (16, 32, 64, 128)},
             batches=(1, 2), train_batch=2),
    ),
    "quick": (  # every pair of "full", at smaller inputs and batches (~15 min on 2 cores)
        Pair("resnet50", ("resnet50_root8", "resnet50_root16", "resnet50_root64"), (112, 112, 3),
             batches=(1, 8), train_batch=8),
        Pair("nin", ("nin_root4", "nin_root8", "nin_root16"), (32, 32, 3), 10, batches=(1, 32),
             train_batch=128),
        Pair("vgg11_gmp", ("vgg11_gmp_lr_join",), (112, 112, 3), batches=(1, 8), train_batch=8),
        Pair("unet3d", ("unet3d_lowrank",), (32, 32, 32, 4), 3, {"widths": (16, 32, 64, 128)},
             batches=(1, 2), train_batch=2),
    ),
    "smoke": (
        Pair("nin", ("nin_root8",), (16, 16, 3), 10, {"width": 0.25}, batches=(1, 4),
             train_batch=4),
        Pair("unet3d", ("unet3d_lowrank",), (16, 16, 16, 2), 2, {"widths": (4, 8)},
             batches=(1,), train_batch=1),
    ),
}

# Targets (structured / baseline ratios), from the project's performance issue.
INT8_FACTOR, KERAS_FACTOR = 1.1, 1.25  # allowed time ratio per MACs ratio
TARGETS = {
    "tflite_int8": "int8 time ratio <= 1.1 x MACs ratio",
    "keras": "Keras TF-CPU inference and training step: time ratio <= 1 and <= 1.25 x MACs ratio",
    "memory": "unet3d_lowrank peak training memory <= 0.5 x unet3d",
    "import": "import keras_priors <= 1.5 x import keras",
}


def _build(name, pair: Pair):
    from .. import zoo

    return zoo.load(name, input_shape=pair.input_shape, classes=pair.classes, **pair.options)


def _inputs(pair, batch, seed=0):
    return np.random.default_rng(seed).normal(size=(batch, *pair.input_shape)).astype("float32")


def _targets(model, batch):
    y = np.zeros((batch, *model.output_shape[1:]), "float32")
    y[..., 0] = 1.0
    return y


def _compile(model):
    import keras

    loss = "binary_crossentropy" if len(model.output_shape) == 5 else "categorical_crossentropy"
    model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9), loss=loss)


def keras_times(pair, names, warmup=2, repeats=5, min_seconds=3.0, build=None):
    """{name: {"infer_bs<B>": ms, "train": ms}} on the TF backend, timed round-robin.
    `build(name, pair)` makes each model (default: the zoo's)."""
    import tensorflow as tf

    models = {n: (build or _build)(n, pair) for n in names}
    out = {n: {} for n in names}
    for batch in pair.batches:
        x = tf.constant(_inputs(pair, batch))
        fns = {n: _forward(m, x) for n, m in models.items()}
        for n, ms in interleaved_median_ms(fns, warmup, repeats, min_seconds).items():
            out[n][f"infer_bs{batch}"] = ms
    x = _inputs(pair, pair.train_batch)
    for m in models.values():
        _compile(m)
    y = {n: _targets(m, pair.train_batch) for n, m in models.items()}
    fns = {n: (lambda m=m, yy=y[n]: m.train_on_batch(x, yy)) for n, m in models.items()}
    for n, ms in interleaved_median_ms(fns, warmup, repeats).items():
        out[n]["train"] = ms
    return out


def _forward(model, x):
    import tensorflow as tf

    fn = tf.function(lambda t: model(t, training=False))
    return lambda: fn(x).numpy()


def tflite_bytes(model, quantization, samples=4):
    """fp32 or full-integer int8 flatbuffer of `model` (batch 1), converted from the model
    the exporter's CPU lowering builds, as `keras-priors export --target cpu` does: root
    layers become one grouped CONV_2D, low-rank members plain convs, and a 3D volume is fed
    as rows (TFLite has no 3D pooling). The int8 calibration data is random: only speed is
    measured here, not accuracy."""
    import tensorflow as tf

    from ..tflite_export.lowering import lower

    model = lower(model, "cpu", batch_size=1).model
    shape = (1, *model.input_shape[1:])
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if quantization == "int8":
        rng = np.random.default_rng(0)
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: ([rng.normal(size=shape).astype("float32")]
                                                    for _ in range(samples))
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
    with contextlib.redirect_stdout(io.StringIO()):  # the converter prints its saved graph
        return converter.convert()


def tflite_times(pair, names, threads=(1, 2), warmup=3, repeats=10, min_seconds=2.0,
                 build=None):
    """{name: {"tflite_<fp32|int8>_t<N>": ms, "tflite_<q>_bytes": size}} in the LiteRT
    interpreter (XNNPACK, the default delegate)."""
    from ai_edge_litert.interpreter import Interpreter

    out = {n: {} for n in names}
    for quant in ("fp32", "int8"):
        blobs = {n: tflite_bytes((build or _build)(n, pair), quant) for n in names}
        for n, blob in blobs.items():
            out[n][f"tflite_{quant}_bytes"] = len(blob)
        for t in threads:
            fns = {}
            for n, blob in blobs.items():
                interp = Interpreter(model_content=blob, num_threads=t)
                interp.allocate_tensors()
                detail = interp.get_input_details()[0]
                interp.set_tensor(detail["index"], np.zeros(detail["shape"], detail["dtype"]))
                fns[n] = interp.invoke
            for n, ms in interleaved_median_ms(fns, warmup, repeats, min_seconds).items():
                out[n][f"tflite_{quant}_t{t}"] = ms
    return out


def peak_training_mb(name, pair, steps=3):
    """Rise of the resident set size over `steps` training steps, in this process."""
    model = _build(name, pair)
    _compile(model)
    x, y = _inputs(pair, pair.train_batch), _targets(model, pair.train_batch)
    return peak_rss_rise_mb(lambda: [model.train_on_batch(x, y) for _ in range(steps)])[1]


def _memory_in_subprocess(name, pair):
    cmd = [sys.executable, "-m", "keras_priors.bench.models", "--memory-of", name,
           "--pair", json.dumps(asdict(pair))]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if done.returncode:
        raise RuntimeError(f"memory measurement of {name} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])["peak_training_mb"]


def import_times(repeats=5):
    """Median wall seconds of `import keras` and `import keras_priors` (+ its layers and zoo)
    in fresh interpreters."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    stmts = {"keras": "import keras", "keras_priors": "import keras_priors",
             "keras_priors.zoo": "import keras_priors.zoo"}
    out = {}
    for name, stmt in stmts.items():
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-c", stmt], env=env, check=True)
            times.append(time.perf_counter() - t0)
        out[name] = float(np.median(times))
    return out


def complexity_of(name, pair, build=None):
    from .. import complexity

    prof = complexity.profile((build or _build)(name, pair), verbose=False)
    return {"macs": prof.total_macs, "params": prof.total_params}


def select_pairs(size, only=None):
    """The pairs of `size`, or those whose baseline is in `only`."""
    pairs = [p for p in SIZES[size] if not only or p.baseline in only]
    if not pairs:
        raise ValueError(f"only={only!r} matches no pair of size {size!r}; baselines: "
                         f"{[p.baseline for p in SIZES[size]]}")
    return pairs


def measure(pair, names, size, tflite=True, build=None):
    """{name: MACs, params, Keras and (with `tflite`) TFLite times} for one pair, timed side
    by side; the smoke size times a few rounds only (it checks the plumbing)."""
    patience = 0.0 if size == "smoke" else 1.0
    rows = {n: complexity_of(n, pair, build) for n in names}
    for n, times in keras_times(pair, names, min_seconds=3.0 * patience, build=build).items():
        rows[n].update(times)
    if tflite:
        for n, times in tflite_times(pair, names, min_seconds=2.0 * patience,
                                     build=build).items():
            rows[n].update(times)
    return rows


def run(size="full", tflite=True, memory=True, progress=print, only=None):
    """All measurements of one size (`only`: baseline names to keep); returns the JSON-able
    results."""
    results = {"size": size, "machine": _machine(), "models": {}, "pairs": []}
    for pair in select_pairs(size, only):
        names = (pair.baseline, *pair.structured)
        progress(f"-- {pair.baseline} vs {', '.join(pair.structured)} at {pair.input_shape}")
        rows = measure(pair, names, size, tflite)
        if memory:
            for n in names:
                rows[n]["peak_training_mb"] = _memory_in_subprocess(n, pair)
        results["models"].update(rows)
        results["pairs"].append(asdict(pair))
    results["import_seconds"] = import_times()
    results["targets"] = check_targets(results)
    return results


def _machine():
    import platform

    import keras
    import tensorflow as tf

    return {"cpus": os.cpu_count(), "platform": platform.platform(), "tf": tf.__version__,
            "keras": keras.__version__}


METRICS = ("infer_bs{b}", "train", "tflite_fp32_t1", "tflite_fp32_t2", "tflite_int8_t1",
           "tflite_int8_t2", "peak_training_mb")


def ratios(results):
    """[(pair, model, {metric: structured / baseline})] for every structured model."""
    out = []
    for pair in results["pairs"]:
        base = results["models"][pair["baseline"]]
        for name in pair["structured"]:
            row = results["models"][name]
            r = {k: row[k] / base[k] for k in row if k in base and base[k]}
            out.append((pair, name, r))
    return out


def check_targets(results):
    """{target: {model: met?}} for what was measured."""
    met = {"tflite_int8": {}, "keras": {}, "memory": {}}
    for pair, name, r in ratios(results):
        macs = r["macs"]
        if "tflite_int8_t2" in r:
            met["tflite_int8"][name] = all(r[f"tflite_int8_t{t}"] <= INT8_FACTOR * macs
                                            for t in (1, 2))
        keras_keys = [k for k in r if k.startswith("infer_bs") or k == "train"]
        met["keras"][name] = all(r[k] <= 1 and r[k] <= KERAS_FACTOR * macs
                                      for k in keras_keys)
        if pair["baseline"] == "unet3d" and "peak_training_mb" in r:
            met["memory"][name] = r["peak_training_mb"] <= 0.5
    imp = results.get("import_seconds")
    if imp:
        met["import"] = {"keras_priors": imp["keras_priors"] <= 1.5 * imp["keras"]}
    return met


def _fmt(r, key):
    return f"{r[key]:.2f}" if key in r else "-"


def table(results):
    """The Markdown tables: ratios with targets, then absolute baseline times."""
    header = ["pair", "model", "MACs", "params", *[f"Keras bs{b}" for b in (1, "N")],
              "Keras train", "TFLite fp32 1t/2t", "TFLite int8 1t/2t", "train memory",
              "targets met"]
    rows = []
    met = results["targets"]
    for pair, name, r in ratios(results):
        b = pair["batches"]
        flags = [("int8", met["tflite_int8"].get(name)), ("keras", met["keras"].get(name)),
                 ("memory", met["memory"].get(name))]
        rows.append([
            f"{pair['baseline']} {tuple(pair['input_shape'])}", name, _fmt(r, "macs"),
            _fmt(r, "params"), _fmt(r, f"infer_bs{b[0]}"), _fmt(r, f"infer_bs{b[-1]}"),
            _fmt(r, "train"), f"{_fmt(r, 'tflite_fp32_t1')} / {_fmt(r, 'tflite_fp32_t2')}",
            f"{_fmt(r, 'tflite_int8_t1')} / {_fmt(r, 'tflite_int8_t2')}",
            _fmt(r, "peak_training_mb"),
            " ".join(f"{k} {'yes' if v else 'NO'}" for k, v in flags if v is not None)])
    lines = ["Ratios structured / baseline (lower is better; MACs and params are the promise):",
             "", markdown_table(header, rows), "", "Baseline absolute values:", ""]
    base_rows = []
    for pair in results["pairs"]:
        r = results["models"][pair["baseline"]]
        b = pair["batches"]
        base_rows.append([
            pair["baseline"], f"{r['macs'] / 1e9:.3f} G", f"{r['params'] / 1e6:.2f} M",
            *[f"{r.get(f'infer_bs{x}', float('nan')):.1f} ms" for x in (b[0], b[-1])],
            f"{r['train']:.0f} ms (bs {pair['train_batch']})",
            " / ".join(f"{r[k]:.1f}" for k in ("tflite_fp32_t1", "tflite_fp32_t2",
                                               "tflite_int8_t1", "tflite_int8_t2") if k in r),
            f"{r['peak_training_mb']:.0f} MB" if "peak_training_mb" in r else "-"])
    lines.append(markdown_table(["model", "MACs", "params", "Keras small batch",
                                 "Keras large batch", "Keras train step",
                                 "TFLite ms fp32 1t / 2t / int8 1t / 2t", "train memory"],
                                base_rows))
    imp = results.get("import_seconds")
    if imp:
        lines += ["", f"Import: keras {imp['keras']:.2f} s, keras_priors "
                      f"{imp['keras_priors']:.2f} s, keras_priors.zoo {imp['keras_priors.zoo']:.2f} s "
                      f"(target keras_priors <= 1.5 x keras: "
                      f"{'met' if met['import']['keras_priors'] else 'NOT met'})."]
    return "\n".join(lines)


def compare(results, old):
    """Markdown: each ratio now vs in a saved JSON (same models)."""
    before = {name: r for _, name, r in ratios(old)}
    rows = []
    for _, name, r in ratios(results):
        if name not in before:
            continue
        for key in sorted(set(r) & set(before[name]) - {"macs", "params"}):
            rows.append([name, key, f"{before[name][key]:.2f}", f"{r[key]:.2f}",
                         f"{r[key] - before[name][key]:+.2f}"])
    return markdown_table(["model", "metric", "saved ratio", "now", "change"], rows)


def _read_saved(path):
    """A results JSON written by `--json`, checked before anything is measured."""
    try:
        saved = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"--compare {path}: no such file") from None
    except (OSError, ValueError) as e:
        raise ValueError(f"--compare {path} is not a saved benchmark JSON: {e}") from None
    if not isinstance(saved, dict) or "models" not in saved or "pairs" not in saved:
        raise ValueError(f"--compare {path} is not a saved benchmark JSON (no 'models' and "
                         "'pairs')")
    return saved


def main(argv=None):
    parser = argparse.ArgumentParser(prog="keras-priors bench models", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=tuple(SIZES), default="full")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--compare", help="a saved JSON to compare the ratios with")
    parser.add_argument("--only", nargs="+", help="baselines of the pairs to run, e.g. resnet50")
    parser.add_argument("--no-tflite", action="store_true")
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--memory-of", help=argparse.SUPPRESS)
    parser.add_argument("--pair", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_of:  # child process of _memory_in_subprocess
        pair = json.loads(args.pair)
        pair = Pair(**{k: tuple(v) if isinstance(v, list) else v for k, v in pair.items()})
        print(json.dumps({"peak_training_mb": peak_training_mb(args.memory_of, pair)}))
        return 0
    saved = _read_saved(args.compare) if args.compare else None  # before hours of timing
    results = run(args.size, tflite=not args.no_tflite, memory=not args.no_memory,
                  progress=lambda m: print(m, file=sys.stderr, flush=True), only=args.only)
    print(table(results))
    if saved is not None:
        print("\n" + compare(results, saved))
    if args.json:
        from .. import io

        io.write_json(Path(args.json), results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
