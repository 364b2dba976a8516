"""Distributed training with real processes on real Fashion-MNIST slices: MirroredStrategy
over 2 logical CPU devices and MultiWorkerMirroredStrategy over 2 localhost workers equal a
single-device run on the same global batch; only the chief writes; a killed worker fails
the run within a bounded time, the last checkpoint stays loadable and resumes on 1 worker.

Dropout masks are drawn per replica, so the equality runs set the dropout rate of the tiny
nin_root8 to 0 (in the worker script below); batch norm runs synchronized (global batch).
The equality runs compute in float64: in float32, summing over replicas in another order
changes the last bits, and batch norm on this tiny width amplifies that to ~1e-4 within 3
steps (the same happens on ONE device when only BN's variance formula changes), which would
hide a real difference (e.g. weight decay applied per replica) behind round-off.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import keras
import numpy as np
import pytest

from keras_priors import distribute, runs

TINY = dict(model="nin_root8", width=0.125, batch_size=64, limit_train=192, limit_test=64,
            warmup_epochs=0.0, epochs=1)  # 3 steps

WORKER = r'''
import json, sys
from pathlib import Path
args = json.loads(sys.argv[1])
from keras_priors import distribute
if args["strategy"] == "mirrored":  # logical devices first, before TensorFlow initialises
    distribute.configure_logical_cpus(2)
import numpy as np
import keras
from keras_priors import runs, training
if args["float64"]:  # fit sets the dtype policy from the config: make it float64
    keras.config.set_floatx("float64")
    runs.precision_policy = lambda mixed: "float64"
if args["no_dropout"]:
    build = training.build_model
    def build_model(cfg, data):
        model = build(cfg, data)
        for layer in model.layers:
            if layer.__class__.__name__ == "Dropout":
                layer.rate = 0.0
            if args.get("sync_bn") and layer.__class__.__name__ == "BatchNormalization":
                layer.synchronized = True
        return model
    training.build_model = build_model
cfg = training.TrainConfig(**args["cfg"])
result = training.fit(cfg, args["out"], resume=args["resume"], verbose=0,
                      strategy=args["strategy"])
out = Path(args["weights"])
np.savez(out, *[np.asarray(w) for w in training.keras.saving.load_model(
    runs.checkpoint_path(args["out"], json.loads((Path(args["out"]) / "state.json").read_text()))
).get_weights()] if distribute.is_chief() else [])
print("RESULT", json.dumps({"replicas": result.get("replicas"), "chief": distribute.is_chief()}))
'''


def _env(**extra):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", KERAS_BACKEND="tensorflow",
               KERAS_PRIORS_COLLECTIVE_TIMEOUT="30")
    env.pop("TF_CONFIG", None)
    env.update(extra)
    return env


def _free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _worker(tmp_path, out, weights, strategy, cfg, env, resume=False, no_dropout=True,
            sync_bn=False, float64=True):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    args = dict(out=str(out), weights=str(weights), strategy=strategy, cfg=cfg, resume=resume,
                no_dropout=no_dropout, sync_bn=sync_bn, float64=float64)
    return subprocess.Popen([sys.executable, str(script), json.dumps(args)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _cluster_env(ports, index):
    config = {"cluster": {"worker": [f"localhost:{p}" for p in ports]},
              "task": {"type": "worker", "index": index}}
    return _env(TF_CONFIG=json.dumps(config))


def _done(proc, timeout=240):
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-3000:]
    return out


def _load(path):
    with np.load(path) as f:
        return [f[k] for k in sorted(f.files, key=lambda k: int(k.split("_")[1]))]


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """Weights of a single-device run (one process, default strategy)."""
    tmp = tmp_path_factory.mktemp("single")
    proc = _worker(tmp, tmp / "run", tmp / "weights.npz", "default", TINY, _env())
    _done(proc)
    return _load(tmp / "weights.npz")


def _assert_close(a, b):
    assert len(a) == len(b) and len(a) > 0
    worst = max(float(np.max(np.abs(x - y))) for x, y in zip(a, b))
    print(f"max |difference| = {worst:.3g}")
    assert worst <= 1e-5, worst


def test_mirrored_two_logical_cpus_equals_single_device(tmp_path, single):
    proc = _worker(tmp_path, tmp_path / "run", tmp_path / "w.npz", "mirrored", TINY, _env())
    out = _done(proc)
    assert '"replicas": 2' in out
    _assert_close(_load(tmp_path / "w.npz"), single)


def test_multiworker_two_processes_equal_single_process(tmp_path, single):
    ports = _free_ports(2)
    out = tmp_path / "run"
    procs = [_worker(tmp_path, out, tmp_path / f"w{i}.npz", "multiworker", TINY,
                     _cluster_env(ports, i)) for i in range(2)]
    logs = [_done(p) for p in procs]
    assert '"chief": true' in logs[0] and '"chief": false' in logs[1]
    assert '"replicas": 2' in logs[0]
    _assert_close(_load(tmp_path / "w0.npz"), single)
    # the non-chief's checkpoint went to a deleted temporary folder: only one writer here
    names = sorted(p.name for p in out.iterdir())
    assert names == ["checkpoint-epoch0001.keras", "config.json", "log.csv", "result.json",
                     "state.json", "tensorboard", "weights.weights.h5"], names
    assert len((out / "log.csv").read_text().strip().splitlines()) == 2
    assert "val_accuracy" in (out / "log.csv").read_text()


def test_killed_worker_fails_bounded_and_resumes_on_one_worker(tmp_path):
    cfg = dict(TINY, limit_train=1024, epochs=4, warmup_epochs=0.5)
    ports = _free_ports(2)
    out = tmp_path / "run"
    procs = [_worker(tmp_path, out, tmp_path / f"w{i}.npz", "multiworker", cfg,
                     _cluster_env(ports, i), no_dropout=False, float64=False)
             for i in range(2)]
    deadline = time.time() + 240
    while time.time() < deadline:
        state = out / "state.json"
        if state.exists() and json.loads(state.read_text())["epoch"] >= 1:
            break
        assert procs[0].poll() is None, procs[0].communicate()[0][-3000:]
        time.sleep(0.2)
    procs[1].send_signal(signal.SIGKILL)
    procs[1].communicate()
    t0 = time.time()
    try:
        log, _ = procs[0].communicate(timeout=120)
    except subprocess.TimeoutExpired:
        procs[0].kill()
        pytest.fail("the chief hung after its peer was killed")
    assert procs[0].returncode != 0, log[-3000:]
    print(f"chief exited {procs[0].returncode} {time.time() - t0:.0f} s after the kill:",
          [line for line in log.splitlines() if "Error" in line][-3:])
    assert time.time() - t0 < 120
    state = json.loads((out / "state.json").read_text())
    assert 1 <= state["epoch"] < 4, "the run was not interrupted mid-way"
    import keras_priors.layers  # noqa: F401  (registers the layers the checkpoint names)

    keras.saving.load_model(runs.checkpoint_path(out, state))  # still intact

    proc = _worker(tmp_path, out, tmp_path / "resumed.npz", "multiworker", cfg,
                   _cluster_env(_free_ports(1), 0), resume=True, no_dropout=False,
                   float64=False)
    log = _done(proc)
    assert '"replicas": 1' in log
    state = json.loads((out / "state.json").read_text())
    assert state["epoch"] == 4 and state["status"] == "completed"
    assert len((out / "log.csv").read_text().strip().splitlines()) == 5  # header + 4 epochs


def test_strategy_names_and_cluster_checks(monkeypatch):
    with pytest.raises(ValueError, match="strategy must be one of .* did you mean 'mirrored'"):
        distribute.get_strategy("mirored")
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(ValueError, match="strategy='multiworker' needs TF_CONFIG"):
        distribute.get_strategy("multiworker")
    assert distribute.is_chief() and distribute.num_workers() == 1
    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(ValueError, match="TF_CONFIG is not valid JSON"):
        distribute.is_chief()
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["a:1"]},
                                                "task": {"type": "worker", "index": 3}}))
    with pytest.raises(ValueError, match="is not in its cluster"):
        distribute.is_chief()
    cluster = {"chief": ["a:1"], "worker": ["b:1", "c:1"]}
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster,
                                                "task": {"type": "worker", "index": 0}}))
    assert not distribute.is_chief() and distribute.num_workers() == 3
    with pytest.raises(ValueError, match="batch_size=63 .* not divisible by the 2 replicas"):
        distribute.per_replica_batch(63, type("S", (), {"num_replicas_in_sync": 2})())


def test_logical_cpus_after_initialisation_is_a_clear_error():
    import tensorflow as tf

    tf.constant(1.0)  # TensorFlow has initialised its devices in this process
    have = len(tf.config.list_logical_devices("CPU"))
    with pytest.raises(RuntimeError, match="already initialised its devices"):
        distribute.configure_logical_cpus(have + 1)


SEG_WORKER = r'''
import json, sys
args = json.loads(sys.argv[1])
from keras_priors import distribute
if args["strategy"] == "mirrored":
    distribute.configure_logical_cpus(2)
import numpy as np
from keras_priors import volumetric as seg
cfg = seg.SegConfig(data=args["data"], patch=(16, 16, 16), widths=(8, 16), epochs=1,
                    steps_per_epoch=2, val_fraction=0.34, batch_size=2)
result = seg.fit_segmentation(cfg, args["out"], verbose=0, strategy=args["strategy"])
model = seg.model_for_inference(args["out"])
np.savez(args["weights"], *[np.asarray(w) for w in model.get_weights()])
print("RESULT", json.dumps({"replicas": result.get("replicas")}))
'''


@pytest.mark.slow  # two more TensorFlow processes and synthetic volumes: about a minute alone
def test_segmentation_under_mirrored_equals_default(tmp_path):
    from keras_priors.volumetric import synthetic
    from keras_priors.volumetric.prepare import prepare_dataset

    synthetic.write_cases(tmp_path / "cases", n=3, seed=0, downsample=4)
    prepare_dataset(tmp_path / "cases", tmp_path / "data", workers=1)
    script = tmp_path / "seg_worker.py"
    script.write_text(SEG_WORKER)
    runs = {}
    for strategy in ("default", "mirrored"):
        args = dict(data=str(tmp_path / "data"), out=str(tmp_path / strategy),
                    weights=str(tmp_path / f"{strategy}.npz"), strategy=strategy)
        proc = subprocess.Popen([sys.executable, str(script), json.dumps(args)], env=_env(),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        runs[strategy] = _done(proc)
    assert '"replicas": 2' in runs["mirrored"]
    _assert_close(_load(tmp_path / "mirrored.npz"), _load(tmp_path / "default.npz"))


JAX_DATA_PARALLEL = r'''
import json, os
os.environ["KERAS_BACKEND"] = "jax"
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
import numpy as np
import keras
from keras_priors import zoo
from keras_priors.data import idx
from keras_priors.data.sources import fashion_mnist_dir
root = fashion_mnist_dir()
x = idx.read_idx(root / "train-images-idx3-ubyte.gz")[:128].astype("float32")[..., None] / 255
y = np.eye(10, dtype="float32")[idx.read_idx(root / "train-labels-idx1-ubyte.gz")[:128]]

def train(distribution):
    keras.distribution.set_distribution(distribution)
    keras.utils.set_random_seed(0)
    model = zoo.load("nin_root8", input_shape=(28, 28, 1), classes=10, width=0.125)
    model.compile(keras.optimizers.SGD(0.02, momentum=0.9), "categorical_crossentropy")
    model.fit(x, y, batch_size=64, epochs=1, shuffle=False, verbose=0)
    return [np.asarray(w) for w in model.get_weights()]

devices = keras.distribution.list_devices()
one = train(None)
two = train(keras.distribution.DataParallel(devices=devices))
print("RESULT", json.dumps({"backend": keras.backend.backend(), "devices": len(devices),
                            "diff": max(float(np.abs(a - b).max()) for a, b in zip(one, two))}))
'''


@pytest.mark.slow  # a JAX process: about 30 s of CPU
def test_jax_data_parallel_equals_one_device(tmp_path):
    """The same zoo model (with dropout and batch norm) under keras.distribution.DataParallel
    on the JAX backend, 2 host devices: the global batch is one SPMD program, so even dropout
    and BN statistics match the single-device run."""
    pytest.importorskip("jax")
    script = tmp_path / "jax_dp.py"
    script.write_text(JAX_DATA_PARALLEL)
    proc = subprocess.Popen([sys.executable, str(script)], env=_env(KERAS_BACKEND="jax"),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = _done(proc, timeout=400)
    result = json.loads(out.split("RESULT", 1)[1].strip().splitlines()[0])
    assert result["backend"] == "jax" and result["devices"] == 2
    assert result["diff"] <= 1e-5, result


def test_synchronize_batch_norm_reaches_nested_models():
    import keras

    inner = keras.Sequential([keras.Input((4,)), keras.layers.BatchNormalization(name="bn_in")])
    x = keras.Input((4,))
    model = keras.Model(x, keras.layers.BatchNormalization(name="bn_out")(inner(x)))
    distribute.synchronize_batch_norm(model)
    norms = [layer for layer in distribute._all_layers(model)
             if isinstance(layer, keras.layers.BatchNormalization)]
    assert [n.name for n in norms] == ["bn_in", "bn_out"] and all(n.synchronized for n in norms)
    distribute.synchronize_batch_norm(model, on=False)
    assert not any(n.synchronized for n in norms)
