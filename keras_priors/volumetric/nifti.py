"""NIfTI reading and writing for segmentation (nibabel).

Volumes are processed in canonical RAS+ orientation and results are written back in the
input's own orientation, with its affine and header, so a label map overlays its scan in
any viewer. NIfTI-1 and NIfTI-2, `.nii` and `.nii.gz`, big-endian, integer and float
inputs are read; every failure names the file.

Non-finite voxels (NaN, +-inf), which some pipelines leave outside the brain, are replaced
by 0 by default with a warning that names the file and the count
(`nonfinite="zero"`); `nonfinite="error"` refuses such files instead. A file with no finite
voxel at all is an error under either policy, and `require_signal` refuses an image that is
constant (all zero, say), which no model can segment.

>>> vol = read_volume("case/flair.nii.gz")            # doctest: +SKIP
>>> vol.data.shape, vol.ras_shape                     # doctest: +SKIP
>>> write_like(vol, labels_in_ras, "out/seg.nii.gz")  # doctest: +SKIP
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import io

NONFINITE_POLICIES = ("zero", "error")


class NiftiError(ValueError):
    """A NIfTI file cannot be read, or files of one case do not fit together."""


@dataclass
class Volume:
    """A volume in RAS+ orientation plus what is needed to write results back."""

    path: Path
    data: np.ndarray  # float32, RAS+, (X, Y, Z) or (X, Y, Z, C) for 4D files
    affine: np.ndarray  # the input file's affine (its own orientation)
    ras_affine: np.ndarray  # the affine of `data`
    header: object  # the input's header (nibabel), copied
    image_class: type  # Nifti1Image or Nifti2Image
    ornt: np.ndarray  # the input's orientation (nibabel ornt array)
    nonfinite: int = 0  # voxels replaced under the non-finite policy

    @property
    def ras_shape(self):
        return self.data.shape[:3]

    @property
    def zooms(self):
        """Voxel size in mm along the RAS axes."""
        return tuple(float(z) for z in np.sqrt((self.ras_affine[:3, :3] ** 2).sum(0)))


def _nib():
    import nibabel

    return nibabel


def read_volume(path, nonfinite="zero", dtype=np.float32) -> Volume:
    """Read a NIfTI file into a RAS+ `Volume`; errors name the file."""
    nib = _nib()
    path = Path(path)
    if nonfinite not in NONFINITE_POLICIES:
        raise ValueError(f"nonfinite must be one of {NONFINITE_POLICIES}, received {nonfinite!r}")
    if not path.is_file():
        raise NiftiError(f"NIfTI file {path} does not exist")
    try:
        img = nib.load(str(path))
        if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
            raise NiftiError(f"{path} is a {type(img).__name__}, not a NIfTI-1/2 image")
        canonical = nib.as_closest_canonical(img)
        data = np.asarray(canonical.dataobj, dtype=np.float64 if dtype == np.float64 else None)
    except NiftiError:
        raise
    except Exception as e:  # nibabel, gzip and numpy raise many kinds for broken files
        raise NiftiError(f"cannot read NIfTI file {path}: it is corrupt or truncated ({e})") from None
    if data.ndim not in (3, 4):
        raise NiftiError(f"{path} has {data.ndim} dimensions {data.shape}; expected a 3D or 4D volume")
    data = data.astype(dtype, copy=False)
    bad = ~np.isfinite(data) if np.issubdtype(data.dtype, np.floating) else None
    count = int(bad.sum()) if bad is not None else 0
    if count and count == data.size:
        raise NiftiError(f"{path} has no finite voxel: all {count} voxels are NaN or inf")
    if count:
        if nonfinite == "error":
            raise NiftiError(f"{path} has {count} non-finite (NaN/inf) voxels (nonfinite='error')")
        warnings.warn(f"{path}: {count} non-finite voxels set to 0", stacklevel=2)
        data = np.where(bad, 0, data).astype(dtype)
    return Volume(path, data, img.affine.copy(), canonical.affine.copy(), img.header.copy(),
                  type(img), nib.io_orientation(img.affine), count)


def from_ras(volume: Volume, array):
    """`array` (RAS+, shape of `volume.ras_shape`) in the input file's own orientation."""
    nib = _nib()
    array = np.asarray(array)
    if array.shape[:3] != volume.ras_shape:
        raise ValueError(
            f"array of shape {array.shape} does not match {volume.path}'s shape {volume.ras_shape}"
        )
    ras = nib.orientations.axcodes2ornt(("R", "A", "S"))
    back = nib.orientations.ornt_transform(ras, volume.ornt)
    return nib.orientations.apply_orientation(array, back)


def write_like(volume: Volume, array, path, dtype=np.uint8, overwrite=False):
    """Write a RAS+ `array` (e.g. a label map) as NIfTI in `volume`'s orientation, with its
    affine and header; atomically, and never over an input or an existing file unless
    `overwrite`."""
    path = Path(path)
    if path.resolve() == volume.path.resolve():
        raise ValueError(f"refusing to overwrite the input file {path}")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
    data = from_ras(volume, array).astype(dtype)
    header = volume.header.copy()
    header.set_data_dtype(dtype)
    header.set_data_shape(data.shape)
    header["scl_slope"], header["scl_inter"] = 1.0, 0.0  # labels are stored unscaled
    img = volume.image_class(data, volume.affine, header=header)
    img.set_qform(volume.affine, code=int(volume.header["qform_code"]) or 1)
    img.set_sform(volume.affine, code=int(volume.header["sform_code"]) or 1)
    return io.save_nifti(img, path)


def require_signal(array, path, what="image"):
    """Raise NiftiError naming `path` if `array` is constant (e.g. all zero): such an image
    carries nothing to segment, and z-scoring it would feed the model zeros.

    >>> require_signal(np.zeros((2, 2, 2)), "flair.nii.gz", "modality flair")
    Traceback (most recent call last):
    ...
    keras_priors.volumetric.nifti.NiftiError: flair.nii.gz (modality flair) is constant: every voxel is 0.0, so there is nothing to segment
    """
    array = np.asarray(array)
    if array.size == 0:
        raise NiftiError(f"{path} ({what}) is empty: shape {array.shape}")
    first = array.flat[0]
    if np.all(array == first):
        raise NiftiError(f"{path} ({what}) is constant: every voxel is {float(first)}, so there "
                         "is nothing to segment")


def check_same_grid(volumes):
    """Raise NiftiError naming the files unless all volumes share shape and affine."""
    first = volumes[0]
    for v in volumes[1:]:
        if v.ras_shape != first.ras_shape:
            raise NiftiError(
                f"{v.path} has shape {v.ras_shape} but {first.path} has {first.ras_shape}: the "
                "images and label of a case must share one voxel grid"
            )
        if not np.allclose(v.ras_affine, first.ras_affine, atol=1e-3):
            raise NiftiError(
                f"{v.path} and {first.path} have different affines (voxel-to-world maps): the "
                "images and label of a case must share one voxel grid"
            )
