"""NIfTI I/O on real files: nibabel's own test images and the Colin27 brain (mricron-data)."""

import gzip
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from keras_priors.volumetric import NiftiError, check_same_grid, from_ras, read_volume, write_like

NIB_DATA = Path(nib.__file__).parent / "tests" / "data"
COLIN = Path("/usr/share/mricron/templates/ch2.nii.gz")


def test_big_endian_int16_file_round_trips(tmp_path):
    src = NIB_DATA / "anatomical.nii"
    img = nib.load(src)
    assert img.header.endianness == ">" and img.get_data_dtype().kind == "i"
    vol = read_volume(src)
    assert vol.data.dtype == np.float32
    assert nib.aff2axcodes(vol.ras_affine) == ("R", "A", "S")
    labels = (vol.data > vol.data.mean()).astype(np.uint8)
    out = write_like(vol, labels, tmp_path / "seg.nii.gz")
    back = nib.load(out)
    np.testing.assert_allclose(back.affine, img.affine)
    assert back.shape == img.shape and back.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(np.asarray(back.dataobj), from_ras(vol, labels))
    np.testing.assert_array_equal(read_volume(out).data, labels)  # RAS again: same voxels


def test_orientation_round_trip_on_real_anatomy(tmp_path):
    img = nib.load(COLIN)
    data = np.asarray(img.dataobj)[::4, ::4, ::4]
    affine = img.affine.copy()
    affine[:3, :3] *= 4
    ras = nib.Nifti1Image(data, affine)
    # the same brain stored as LPI with axes permuted (what scanners and tools often write)
    target = nib.orientations.axcodes2ornt(("P", "I", "L"))
    transform = nib.orientations.ornt_transform(nib.io_orientation(affine), target)
    odd = ras.as_reoriented(transform)
    nib.save(ras, tmp_path / "ras.nii.gz")
    nib.save(odd, tmp_path / "pil.nii.gz")
    a, b = read_volume(tmp_path / "ras.nii.gz"), read_volume(tmp_path / "pil.nii.gz")
    np.testing.assert_array_equal(a.data, b.data)  # processed in one orientation
    np.testing.assert_allclose(a.ras_affine, b.ras_affine, atol=1e-5)
    labels = (a.data > 50).astype(np.uint8)
    out = write_like(b, labels, tmp_path / "pil_seg.nii.gz")
    saved = nib.load(out)
    assert nib.aff2axcodes(saved.affine) == ("P", "I", "L")  # written in the input's own
    np.testing.assert_array_equal(np.asarray(saved.dataobj),
                                  np.asarray(nib.Nifti1Image(labels, a.ras_affine)
                                             .as_reoriented(transform).dataobj))


def test_nifti2_and_4d_inputs(tmp_path):
    vol = read_volume(NIB_DATA / "example_nifti2.nii.gz")
    assert vol.image_class is nib.Nifti2Image
    out = write_like(vol, np.zeros(vol.ras_shape), tmp_path / "n2.nii")
    assert isinstance(nib.load(out), nib.Nifti2Image)
    four = read_volume(NIB_DATA / "example4d.nii.gz")
    assert four.data.ndim == 4


def test_nonfinite_policy(tmp_path):
    data = np.ones((4, 5, 6), np.float32)
    data[0, 0, 0], data[1, 1, 1] = np.nan, np.inf
    nib.save(nib.Nifti1Image(data, np.eye(4)), tmp_path / "nan.nii.gz")
    with pytest.warns(UserWarning, match="nan.nii.gz: 2 non-finite voxels set to 0"):
        vol = read_volume(tmp_path / "nan.nii.gz")
    assert vol.nonfinite == 2 and np.isfinite(vol.data).all() and vol.data.sum() == 118
    with pytest.raises(NiftiError, match="nan.nii.gz has 2 non-finite"):
        read_volume(tmp_path / "nan.nii.gz", nonfinite="error")


def test_corrupt_and_truncated_files_name_the_file(tmp_path):
    raw = gzip.decompress(COLIN.read_bytes())
    (tmp_path / "cut.nii.gz").write_bytes(gzip.compress(raw)[: len(raw) // 20])
    with pytest.raises(NiftiError, match="cut.nii.gz: it is corrupt or truncated|cannot read NIfTI file .*cut.nii.gz"):
        read_volume(tmp_path / "cut.nii.gz")
    (tmp_path / "short.nii").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(NiftiError, match="short.nii"):
        read_volume(tmp_path / "short.nii")
    (tmp_path / "junk.nii").write_bytes(os.urandom(1000))
    with pytest.raises(NiftiError, match="junk.nii"):
        read_volume(tmp_path / "junk.nii")
    with pytest.raises(NiftiError, match="does not exist"):
        read_volume(tmp_path / "none.nii.gz")


def test_grid_mismatch_names_both_files(tmp_path):
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4)), np.eye(4)), tmp_path / "a.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 5)), np.eye(4)), tmp_path / "b.nii.gz")
    shifted = np.eye(4)
    shifted[0, 3] = 10
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4)), shifted), tmp_path / "c.nii.gz")
    a, b, c = (read_volume(tmp_path / f"{n}.nii.gz") for n in "abc")
    with pytest.raises(NiftiError, match=r"b.nii.gz has shape \(4, 4, 5\) but .*a.nii.gz has"):
        check_same_grid([a, b])
    with pytest.raises(NiftiError, match="c.nii.gz and .*a.nii.gz have different affines"):
        check_same_grid([a, c])


def test_inputs_are_never_overwritten(tmp_path):
    src = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.eye(4)), src)
    before = src.read_bytes()
    vol = read_volume(src)
    with pytest.raises(ValueError, match="refusing to overwrite the input file"):
        write_like(vol, np.zeros((4, 4, 4)), src, overwrite=True)
    write_like(vol, np.zeros((4, 4, 4)), tmp_path / "seg.nii.gz")
    with pytest.raises(FileExistsError, match="seg.nii.gz exists"):
        write_like(vol, np.zeros((4, 4, 4)), tmp_path / "seg.nii.gz")
    assert src.read_bytes() == before


def test_a_file_without_finite_voxels_is_an_error_under_either_policy(tmp_path):
    nib.save(nib.Nifti1Image(np.full((3, 3, 3), np.nan, np.float32), np.eye(4)),
             tmp_path / "empty.nii.gz")
    for policy in ("zero", "error"):
        with pytest.raises(NiftiError, match=r"empty.nii.gz has no finite voxel: all 27 voxels "
                                             r"are NaN or inf"):
            read_volume(tmp_path / "empty.nii.gz", nonfinite=policy)


def test_require_signal_refuses_constant_images():
    from keras_priors.volumetric.nifti import require_signal

    require_signal(np.arange(8.0).reshape(2, 2, 2), "t1.nii.gz")
    with pytest.raises(NiftiError, match=r"t1.nii.gz \(modality t1\) is constant: every voxel "
                                         r"is 3.0, so there is nothing to segment"):
        require_signal(np.full((2, 2, 2), 3.0), "t1.nii.gz", "modality t1")


def test_written_label_maps_get_umask_permissions(tmp_path):
    src = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((4, 4, 4), np.float32), np.eye(4)), src)
    vol = read_volume(src)
    old = os.umask(0o022)
    try:
        out = write_like(vol, np.zeros((4, 4, 4)), tmp_path / "seg.nii.gz")
    finally:
        os.umask(old)
    assert out.stat().st_mode & 0o777 == 0o666 & ~0o022 == 0o644
