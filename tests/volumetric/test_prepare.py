"""The prepared (memory-mapped) dataset and the parallel patch loader, on tiny synthetic-BraTS
cases (synthetic lesions on real anatomy, written as real NIfTI with nibabel)."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import tracemalloc

import nibabel as nib
import numpy as np
import pytest

from keras_priors.volumetric import layouts, pipeline, synthetic
from keras_priors.volumetric.nifti import NiftiError
from keras_priors.volumetric.prepare import (
    PreparedDataset,
    check_cases,
    default_root,
    prepare_dataset,
)


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    root = tmp_path_factory.mktemp("brats") / "data"
    synthetic.write_cases(root, n=3, seed=0, downsample=4)
    return root


@pytest.fixture
def data(source, tmp_path):
    """A private copy of the cases, free to be edited by the test."""
    return shutil.copytree(source, tmp_path / "data")


@pytest.fixture(scope="module")
def prepared(source, tmp_path_factory):
    return prepare_dataset(source, tmp_path_factory.mktemp("prep") / "out", workers=1,
                           progress=False)


def _mtimes(root):
    return {p.name: p.stat().st_mtime_ns for p in root.iterdir() if p.suffix in (".npy", ".npz")}


def _case_files(root, case_id):
    return {n for n in _mtimes(root) if n.startswith(case_id + "_")}


def test_prepared_arrays_equal_load_case_zscore_and_crop(source, prepared):
    cases = layouts.discover(source)
    assert prepared.case_ids == [c.case_id for c in cases]
    assert (prepared.channels, prepared.outputs) == (4, 3)
    assert prepared.modalities == ("flair", "t1", "t1ce", "t2")
    assert prepared.regions == layouts.REGIONS["brats2021"]
    for case in cases:
        images, label, ref = layouts.load_case(case)
        entry = prepared.case(case.case_id)
        box = tuple(slice(a, b) for a, b in entry["crop_box"])
        x, y = prepared.images(case.case_id), prepared.targets(case.case_id)
        assert isinstance(x, np.memmap) and isinstance(y, np.memmap)
        assert x.dtype == np.float32 and y.dtype == np.uint8
        np.testing.assert_allclose(x, pipeline.zscore(images)[box], rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal(y, layouts.to_regions(label, case.regions)[box])
        # the crop is the tight box of the non-zero voxels: nothing outside, every face touched
        inside = np.zeros(images.shape[:3], bool)
        inside[box] = True
        nonzero = np.any(images != 0, -1) | (label > 0)
        assert not nonzero[~inside].any()
        for axis in range(3):
            other = tuple(a for a in range(3) if a != axis)
            hits = np.flatnonzero(nonzero.any(other))
            assert [hits[0], hits[-1] + 1] == entry["crop_box"][axis]
        assert entry["shape"] == list(x.shape[:3])
        assert entry["original_shape"] == list(images.shape[:3])
        assert entry["spacing"] == [4.0, 4.0, 4.0]
        np.testing.assert_allclose(entry["affine"], ref.ras_affine)
        assert entry["label_values"] == sorted(np.unique(label).tolist())
        assert entry["foreground"] == {r: int(y[..., i].sum())
                                       for i, r in enumerate(prepared.regions)}
        flair = entry["sources"]["images"]["flair"]
        assert flair["size"] == os.path.getsize(case.images["flair"])
        assert flair["mtime_ns"] == os.stat(case.images["flair"]).st_mtime_ns
        assert len(flair["sha256"]) == 64
        fg = prepared.foreground(case.case_id)
        assert fg.shape[1] == 3 and len(fg) == int(y.max(-1).sum())  # < 10,000: all kept
        assert y.max(-1)[tuple(fg.T)].min() == 1
    manifest = json.loads((prepared.root / "manifest.json").read_text())
    assert manifest["complete"] and manifest["layout"] == "brats2021"
    assert manifest == PreparedDataset.open(prepared.root).manifest


def test_foreground_samples_are_capped_and_seeded_by_case(data, tmp_path, monkeypatch):
    from keras_priors.volumetric import prepare as module

    monkeypatch.setattr(module, "FG_SAMPLES", 20)
    a = prepare_dataset(data, tmp_path / "a", workers=1, progress=False)
    b = prepare_dataset(data, tmp_path / "b", workers=1, progress=False)
    case_id = a.case_ids[0]
    samples = a.foreground_samples(case_id)
    assert [len(s) for s in samples] == [min(20, n) for n in a.case(case_id)["foreground"].values()]
    for s, t in zip(samples, b.foreground_samples(case_id)):
        np.testing.assert_array_equal(s, t)
    y = a.targets(case_id)
    for r, s in enumerate(samples):
        assert y[..., r][tuple(s.T)].min() == 1


KILL_SCRIPT = """
import sys, time
from keras_priors.volumetric import prepare
original, calls = prepare._prepare_one, []
def slow(*args):
    calls.append(1)
    if len(calls) > 1:
        time.sleep(120)  # the second case is in flight when the test kills this process
    return original(*args)
prepare._prepare_one = slow
prepare.prepare_dataset(sys.argv[1], sys.argv[2], workers=1, progress=False)
"""


def test_resumes_after_sigkill_preparing_only_the_missing_cases(source, tmp_path):
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(source), str(out)])
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            manifest = out / "manifest.json"
            if manifest.is_file() and len(json.loads(manifest.read_text())["cases"]) == 1:
                break
            assert proc.poll() is None, "the preparing process ended before it was killed"
            time.sleep(0.05)
        else:
            pytest.fail("no case reached the manifest")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    with pytest.raises(ValueError, match="incompletely prepared"):
        PreparedDataset.open(out)
    first = next(iter(json.loads((out / "manifest.json").read_text())["cases"]))
    before = _mtimes(out)
    assert set(before) == _case_files(out, first)
    ds = prepare_dataset(source, out, workers=1, progress=False)
    after = _mtimes(out)
    assert {n: after[n] for n in before} == before  # the finished case was not redone
    clean = prepare_dataset(source, tmp_path / "clean", workers=1, progress=False)
    assert ds.case_ids == clean.case_ids and set(after) == set(_mtimes(clean.root))
    for case_id in ds.case_ids:
        np.testing.assert_array_equal(ds.images(case_id), clean.images(case_id))
        np.testing.assert_array_equal(ds.targets(case_id), clean.targets(case_id))
        np.testing.assert_array_equal(ds.foreground(case_id), clean.foreground(case_id))
        strip = {"seconds"}
        assert ({k: v for k, v in ds.case(case_id).items() if k not in strip}
                == {k: v for k, v in clean.case(case_id).items() if k not in strip})


def test_changed_removed_and_deleted_cases(data, tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_PRIORS_HOME", str(tmp_path / "home"))
    ds = prepare_dataset(data, workers=1, progress=False)
    assert ds.root.parent == default_root() == tmp_path / "home" / "prepared"
    assert prepare_dataset(data, workers=1, progress=False).root == ds.root  # shared
    before = _mtimes(ds.root)
    case_ids = ds.case_ids
    # a changed source file: that case only is prepared again, and the content key moves
    path = data / case_ids[1] / f"{case_ids[1]}_t2.nii.gz"
    img = nib.load(path)
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj) * 2, img.affine), path)
    changed = prepare_dataset(data, ds.root, workers=1, progress=False)
    after = _mtimes(ds.root)
    assert {n for n in after if after[n] != before[n]} == _case_files(ds.root, case_ids[1])
    t2 = changed.case(case_ids[1])["sources"]["images"]["t2"]
    assert t2["mtime_ns"] == path.stat().st_mtime_ns
    assert prepare_dataset(data, workers=1, progress=False).root != ds.root
    # deleted prepared files: re-made; a removed case: dropped with its files
    (ds.root / f"{case_ids[0]}_images.npy").unlink()
    shutil.rmtree(data / case_ids[2])
    again = prepare_dataset(data, ds.root, workers=1, progress=False)
    assert again.case_ids == case_ids[:2]
    assert not _case_files(ds.root, case_ids[2])
    final = _mtimes(ds.root)
    assert {n for n in final if final[n] != after.get(n)} == _case_files(ds.root, case_ids[0])


def test_out_inside_the_data_is_refused(data, tmp_path):
    for out in (data, data / "prepared", data / layouts.discover(data)[0].case_id / "p"):
        with pytest.raises(ValueError, match="inside the data folder"):
            prepare_dataset(data, out, progress=False)
    assert not (data / "prepared").exists()
    stranger = tmp_path / "notes"
    stranger.mkdir()
    (stranger / "todo.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not a prepared dataset"):
        prepare_dataset(data, stranger, progress=False)
    assert [p.name for p in stranger.iterdir()] == ["todo.txt"]


def _broken(data, kind):
    case_id = layouts.discover(data)[-1].case_id
    folder = data / case_id
    if kind == "shape":
        path = folder / f"{case_id}_flair.nii.gz"
        img = nib.load(path)
        nib.save(nib.Nifti1Image(np.asarray(img.dataobj)[:-2], img.affine), path)
        return path, "shape"
    if kind == "affine":
        path = folder / f"{case_id}_t1.nii.gz"
        img = nib.load(path)
        affine = img.affine.copy()
        affine[0, 3] += 30
        nib.save(nib.Nifti1Image(np.asarray(img.dataobj), affine), path)
        return path, "different affines"
    if kind == "unreadable":
        path = folder / f"{case_id}_t2.nii.gz"
        path.write_bytes(b"not a nifti file at all")
        return path, "cannot read"
    path = folder / f"{case_id}_seg.nii.gz"
    img = nib.load(path)
    label = np.asarray(img.dataobj).copy()
    label[label == 2] = 3
    nib.save(nib.Nifti1Image(label, img.affine), path)
    return path, r"values \[3\]"


@pytest.mark.parametrize("kind", ["shape", "affine", "unreadable", "label"])
def test_a_broken_case_fails_naming_the_file_before_anything_is_written(data, tmp_path, kind):
    path, message = _broken(data, kind)
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=message) as info:
        prepare_dataset(data, out, workers=2 if kind == "label" else 1, progress=False)
    assert str(path) in str(info.value)
    assert not list(out.glob("*.np*"))  # no other case was written either
    if kind != "label":  # found from the headers alone
        with pytest.raises(NiftiError, match=message):
            check_cases(layouts.discover(data))


def _stream(ds):
    return [(x.numpy(), y.numpy()) for x, y in ds]


def test_patch_stream_depends_only_on_seed_and_epoch(prepared):
    common = dict(size=(16, 16, 16), batch_size=2, seed=3, per_case=2, foreground=0.7)
    one = _stream(pipeline.patch_dataset(prepared, None, first_epoch=0, epochs=3, workers=1,
                                         **common))
    four = _stream(pipeline.patch_dataset(prepared, None, first_epoch=0, epochs=3, workers=4,
                                          **common))
    resumed = _stream(pipeline.patch_dataset(prepared, None, first_epoch=1, epochs=3, **common))
    assert len(one) == 3 * 3  # 3 cases x 2 patches / batch 2, per epoch
    for a, b in zip(one, four):
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])
    for a, b in zip(one[3:], resumed, strict=True):
        np.testing.assert_array_equal(a[0], b[0])
    numpy_only = list(pipeline.epoch_patches(prepared, (16, 16, 16), 3, 2, per_case=2,
                                             foreground=0.7))
    np.testing.assert_array_equal(np.stack([x for x, _ in numpy_only]),
                                  np.concatenate([x for x, _ in one[6:]]))
    other = _stream(pipeline.patch_dataset(prepared, None, first_epoch=0, epochs=1,
                                           **(common | {"seed": 4})))
    assert not np.array_equal(other[0][0], one[0][0])
    # steps_per_epoch fixes the epoch length, so Keras epochs and patch epochs coincide
    fixed = _stream(pipeline.patch_dataset(prepared, prepared.case_ids[:2], first_epoch=0,
                                           epochs=2, steps_per_epoch=5, **common))
    assert len(fixed) == 10


def test_pydataset_loader_yields_the_tf_data_batches(prepared):
    """loader="py" (what JAX and torch train from) gives the tf.data batches, in-process and
    with worker processes, from any first epoch."""
    common = dict(size=(16, 16, 16), batch_size=2, seed=3, per_case=2, foreground=0.7)
    tf_stream = _stream(pipeline.patch_dataset(prepared, None, first_epoch=1, epochs=3,
                                               **common))
    for workers in (None, 2):
        py = pipeline.patch_dataset(prepared, None, first_epoch=1, epochs=3, loader="py",
                                    workers=workers, **common)
        assert isinstance(py, pipeline.PatchBatches) and len(py) == len(tf_stream) == 6
        for k, (x, y) in enumerate(tf_stream):
            np.testing.assert_array_equal(py[k][0], x)
            np.testing.assert_array_equal(py[k][1], y)
    with pytest.raises(ValueError, match="loader must be"):
        pipeline.patch_dataset(prepared, None, first_epoch=0, epochs=1, loader="torch", **common)


def test_foreground_oversampling_and_targets(prepared):
    patches = list(pipeline.epoch_patches(prepared, (8, 8, 8), seed=0, epoch=0, per_case=4,
                                          foreground=1.0, augmentation=False))
    assert all(y.max() == 1 for _, y in patches)
    x, y = patches[0]
    assert x.dtype == np.float32 and y.dtype == np.float32 and y.shape == (8, 8, 8, 3)


def test_volumes_smaller_than_the_patch_are_zero_padded(prepared):
    case_id = prepared.case_ids[0]
    shape = prepared.images(case_id).shape[:3]
    size = tuple(s + 5 for s in shape)
    x, y = pipeline.load_patch(prepared, case_id, size, 0, 0, 0, augmentation=False)
    np.testing.assert_array_equal(x[:shape[0], :shape[1], :shape[2]], prepared.images(case_id))
    assert not x[shape[0]:].any() and not y[:, shape[1]:].any()


def test_the_loader_reads_only_the_patch_from_memory_maps(tmp_path):
    root = tmp_path / "data"
    synthetic.write_cases(root, n=1, seed=1, downsample=2, anatomies=("colin27",))
    ds = prepare_dataset(root, tmp_path / "out", workers=1, progress=False)
    case_id = ds.case_ids[0]
    images = ds.images(case_id)
    assert isinstance(images, np.memmap) and images.nbytes > 5_000_000
    ds.foreground_samples(case_id)  # read once per case: bounded by FG_SAMPLES, not the volume
    size = (12, 12, 12)
    tracemalloc.start()
    try:
        for position in range(8):
            x, _ = pipeline.load_patch(ds, case_id, size, 0, 0, position)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # numpy reports its allocations to tracemalloc: a copy of the volume, or of one channel
    # of it, would show; a patch and its augmentation temporaries are a few patch sizes
    patch_bytes = x.nbytes
    one_channel = images.nbytes // images.shape[-1]
    assert x.shape == (*size, 4) and 16 * patch_bytes < one_channel
    assert peak < 16 * patch_bytes, (peak, patch_bytes)


def test_the_earlier_in_memory_source_still_works():
    images = np.random.default_rng(0).normal(size=(12, 12, 12, 2)).astype(np.float32)
    y = np.zeros((12, 12, 12, 1), np.uint8)
    y[4:6, 4:6, 4:6] = 1
    pairs = [(images, y)]
    stream = _stream(pipeline.patch_dataset(pairs, None, (8, 8, 8), 2, 0, 0, 2, per_case=2))
    patches = [p for e in range(2) for p in pipeline.epoch_patches(pairs, (8, 8, 8), 0, e)]
    assert len(stream) == 2
    np.testing.assert_array_equal(np.concatenate([x for x, _ in stream]),
                                  np.stack([x for x, _ in patches]))


def test_prepare_dataset_argument_errors(data, tmp_path):
    with pytest.raises(ValueError, match="workers must be a positive integer"):
        prepare_dataset(data, tmp_path / "out", workers=0)
    with pytest.raises(FileNotFoundError, match="no manifest.json"):
        PreparedDataset.open(tmp_path)


def test_benchmark_cases_keep_their_world_coordinates(tmp_path):
    from keras_priors.bench import seg as bench

    array = np.arange(5 * 6 * 7).reshape(5, 6, 7)
    out, offset = bench._fit(array, (8, 4, 7), centre=(2, 3, 3))
    for v in np.ndindex(out.shape):
        old = np.array(v) + offset
        inside = all(0 <= o < n for o, n in zip(old, array.shape))
        assert out[v] == (array[tuple(old)] if inside else 0)
    bench.write_cases(tmp_path, 0, 1, shape=(48, 48, 40), downsample=4)
    case = layouts.discover(tmp_path)[0]
    check_cases([case])
    images, label, ref = layouts.load_case(case)
    assert images.shape == (48, 48, 40, 4) and ref.zooms == (4.0, 4.0, 4.0)
    assert label.max() > 0 and set(np.unique(label)) <= {0, 1, 2, 4}
