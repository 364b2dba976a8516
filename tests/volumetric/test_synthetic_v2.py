"""Generator version 2: domain-randomised tumours and scans on the real Colin27 / MNI152 brains."""

from dataclasses import fields, replace

import numpy as np
import pytest

from keras_priors import volumetric
from keras_priors.volumetric import synthetic
from keras_priors.volumetric.synthetic import v2

# a scan with no acquisition randomisation: what the contrast and shape tests look at
CLEAN = replace(v2.TRAIN, bias_std=(0.0, 0.0), gamma_std=0.0, noise=(0.0, 0.0),
                low_resolution=0.0, texture=(0.0, 0.0), contrast_jitter=(0.0, 0.0),
                random_contrast=0.0, elastic_mm=(0.0, 0.0), rotation_deg=0.0,
                scale=(1.0, 1.0))


@pytest.fixture(scope="module")
def mni():
    return synthetic.load_anatomy("mni152", 3)


def _volume_cm3(labels, anatomy, which=(1, 2, 4)):
    voxel = np.prod(np.sqrt((anatomy.affine[:3, :3] ** 2).sum(0)))
    return np.isin(labels, which).sum() * voxel / 1000


def test_a_case_depends_only_on_seed_and_index(mni):
    a = v2.make_case(mni, v2.case_rng(4, 7))
    b = v2.make_case(mni, v2.case_rng(4, 7))
    c = v2.make_case(mni, v2.case_rng(4, 8))
    d = v2.make_case(mni, v2.case_rng(4, 7, epoch=1))
    np.testing.assert_array_equal(a[1], b[1])
    for k in v2.MODALITIES:
        np.testing.assert_array_equal(a[0][k], b[0][k])
    assert not np.array_equal(a[0]["flair"], c[0]["flair"])
    assert not np.array_equal(a[0]["flair"], d[0]["flair"])


def test_labels_and_images_are_brats_like(mni):
    for i in range(4):
        volumes, labels = v2.make_case(mni, v2.case_rng(0, i))
        assert labels.shape == mni.t1.shape and labels.dtype == np.uint8
        assert set(np.unique(labels)) <= {0, 1, 2, 4} and labels.any()
        brain = volumes["t1"] > 0
        assert not (labels[~brain]).any()  # lesions lie inside the (skull-stripped) brain
        for k in v2.MODALITIES:
            v = volumes[k]
            assert v.dtype == np.float32 and np.isfinite(v).all()
            assert ((v > 0) == brain).all()  # zero outside the brain, positive inside
            assert 0 < v[brain].mean() < 1500


def test_the_whole_tumour_volume_follows_the_ranges(mni):
    for target in (5.0, 120.0):
        r = replace(CLEAN, whole_tumour_cm3=(target, target), multifocal=0.0, mass_effect=0.0)
        got = [_volume_cm3(v2.make_case(mni, v2.case_rng(1, i), r)[1], mni) for i in range(3)]
        # irregular shapes, and lesions cut by the brain's edge and the CSF, change the
        # volume, but it stays within a factor of about two of the target
        assert target / 2.5 < np.median(got) < target * 2, (target, got)
    small = replace(CLEAN, whole_tumour_cm3=(5.0, 5.0), multifocal=0.0)
    large = replace(CLEAN, whole_tumour_cm3=(300.0, 300.0), multifocal=0.0)
    assert (_volume_cm3(v2.make_case(mni, v2.case_rng(2, 0), large)[1], mni)
            > 10 * _volume_cm3(v2.make_case(mni, v2.case_rng(2, 0), small)[1], mni))


def test_compartments_can_be_switched_off(mni):
    plain = replace(CLEAN, necrosis=0.0, enhancement=0.0, no_oedema=1.0,
                    whole_tumour_cm3=(40.0, 40.0))
    labels = v2.make_case(mni, v2.case_rng(3, 0), plain)[1]
    assert set(np.unique(labels)) == {0, 1}  # a non-enhancing core alone, no oedema
    full = replace(CLEAN, necrosis=1.0, enhancement=1.0, no_oedema=0.0,
                   whole_tumour_cm3=(60.0, 60.0), rim=(0.3, 0.3))
    assert set(np.unique(v2.make_case(mni, v2.case_rng(3, 0), full)[1])) == {0, 1, 2, 4}


def test_clean_contrasts_follow_the_canonical_orderings(mni):
    r = replace(CLEAN, necrosis=1.0, enhancement=1.0, no_oedema=0.0,
                whole_tumour_cm3=(80.0, 80.0), multifocal=0.0, rim=(0.4, 0.4))
    volumes, labels = v2.make_case(mni, v2.case_rng(5, 0), r)
    wm = (mni.tissues[..., 2] > 0.9) & (labels == 0)
    oedema, enhancing, necrotic = labels == 2, labels == 4, labels == 1
    flair, t1, t1ce, t2 = (volumes[k] for k in ("flair", "t1", "t1ce", "t2"))
    assert flair[oedema].mean() > 1.5 * flair[wm].mean()
    assert t1ce[enhancing].mean() > 1.3 * t1ce[oedema].mean()
    assert t2[necrotic].mean() > t2[wm].mean() and t1[necrotic].mean() < t1[wm].mean()


def test_random_contrast_breaks_the_orderings(mni):
    shuffled = replace(v2.TRAIN, random_contrast=1.0)
    means = [v2.class_means(v2.case_rng(6, i), shuffled) for i in range(20)]
    flipped = sum(m["flair"][4] < m["flair"][2] for m in means)  # oedema darker than WM
    assert 2 <= flipped <= 18
    canonical = [v2.class_means(v2.case_rng(6, i), v2.TRAIN) for i in range(20)]
    assert sum(m["flair"][4] < m["flair"][2] for m in canonical) <= 3  # 10%: at random


def test_ood_shape_and_contrast_ranges_are_outside_training():
    for name in ("irregularity", "oedema_ratio", "contrast_jitter"):
        assert getattr(v2.TRAIN, name)[1] <= getattr(v2.OOD, name)[0], name
    assert v2.OOD.rim[1] <= v2.TRAIN.rim[0] and v2.OOD.foci[1] > v2.TRAIN.foci[1]
    acquisition = ("bias_std", "gamma_std", "noise", "low_resolution", "isotropic_mm",
                   "thick_axis_mm")
    assert all(getattr(v2.OOD, f) == getattr(v2.TRAIN, f) for f in acquisition)
    assert {f.name for f in fields(v2.Ranges)} >= set(acquisition)
    with pytest.raises(ValueError, match="ranges must be one of"):
        v2.check_ranges("test")


def test_acquisition_pieces():
    rng = np.random.default_rng(0)
    zooms = np.array([1.0, 1.0, 1.0])
    checker = (np.indices((32, 32, 32)).sum(0) % 2).astype(np.float32)
    iso = v2.degrade_resolution(checker, zooms, (4, 4, 4))
    assert iso.shape == checker.shape and iso.std() < 0.2 * checker.std()
    stripes = np.zeros((32, 32, 32), np.float32)
    stripes[:, :, ::2] = 1
    thick = v2.degrade_resolution(stripes, zooms, (1, 1, 6))  # thick slices along z
    assert thick[:, :, 8:24].std(axis=2).mean() < 0.2
    across = v2.degrade_resolution(np.swapaxes(stripes, 0, 2), zooms, (1, 1, 6))
    assert across[8:24].std(axis=0).mean() > 0.3  # stripes across x survive a thick z
    field = v2.bias_field((40, 40, 40), zooms, rng, 0.7)
    assert abs(np.log(field).std() - 0.7) < 0.05 and field.min() > 0
    spacings = [v2.low_resolution_spacing(rng, v2.TRAIN) for _ in range(50)]
    assert max(s.max() for s in spacings) > 4 and min(s.min() for s in spacings) >= 1


def test_mass_effect_pushes_tissue_away():
    shape, centre = (72, 72, 72), np.array([36, 36, 36])
    dist = np.sqrt(((np.indices(shape) - centre[:, None, None, None]) ** 2).sum(0))
    tissues = np.zeros((*shape, 3), np.float32)
    tissues[..., 0] = 1
    shell = np.abs(dist - 20) < 1  # a shell of white matter 20 mm from the lesion centre
    tissues[shell] = (0, 0, 1)
    brain = np.ones(shape, bool)
    r = replace(v2.TRAIN, mass_effect=1.0, mass_effect_push=(0.5, 0.5))
    pushed, kept = v2.mass_effect(tissues, brain, [(centre, 10.0, 20.0)], np.ones(3),
                                  np.random.default_rng(0), r)
    wm = pushed[..., 2]
    radius = (dist * wm).sum() / wm.sum()
    assert 22 < radius < 27  # 5 mm of push at the lesion's edge moves the shell outward
    assert kept.all()
    far = dist > 60
    np.testing.assert_allclose(pushed[far], tissues[far])  # nothing moves far away


def test_written_version_2_cases(tmp_path):
    root = tmp_path / "v2"
    synthetic.write_cases(root, n=2, seed=9, downsample=4, version=2)
    found = volumetric.discover(root)
    assert volumetric.detect(root) == "brats2021" and len(found) == 2
    assert "generator version 2, ranges train, seed 9, case 1" in (
        root / "BraTS2021_00001" / "SYNTHETIC.txt").read_text()
    images, label, _ = volumetric.load_case(found[1])
    # case 1 is the same whether written first or second
    synthetic.write_cases(tmp_path / "alone", n=1, seed=9, downsample=4, version=2, start=1)
    again = volumetric.load_case(volumetric.discover(tmp_path / "alone")[0])
    np.testing.assert_array_equal(label, again[1])
    np.testing.assert_allclose(images, again[0], rtol=1e-6)
    with pytest.raises(ValueError, match="version must be one of"):
        synthetic.write_cases(tmp_path / "x", n=1, version=3)
    with pytest.raises(ValueError, match="ranges and degrade apply to generator version 2"):
        synthetic.write_cases(tmp_path / "x", n=1, ranges="ood")
    with pytest.raises(ValueError, match="ranges must be one of"):
        synthetic.write_cases(tmp_path / "x", n=1, version=2, ranges="wide")
    assert not (tmp_path / "x").exists()


def test_colin27_tissue_classes_are_ordered_by_t1():
    colin = synthetic.load_anatomy("colin27", 4)
    t = np.asarray(colin.tissues)[colin.brain]
    t1 = np.asarray(colin.t1)[colin.brain]
    means = [(t[:, k] * t1).sum() / t[:, k].sum() for k in range(3)]
    assert means[0] < means[1] < means[2]  # CSF < GM < WM on T1
    np.testing.assert_allclose(t.sum(1), 1, atol=1e-4)
    assert all(t[:, k].mean() > 0.1 for k in range(3))
    with pytest.raises(ValueError):
        colin.tissues[0, 0, 0, 0] = 1.0  # shared between cases: read-only


def test_seg_synth_cli_writes_either_generator(tmp_path, capsys):
    from keras_priors import cli

    out = tmp_path / "ood"
    assert cli.main(["seg", "synth", str(out), "--cases", "1", "--downsample", "4",
                     "--generator", "2", "--ranges", "ood", "--seed", "3"]) == 0
    assert "generator 2, ranges ood" in capsys.readouterr().out
    assert "ranges ood, seed 3, case 0" in (out / "BraTS2021_00000" / "SYNTHETIC.txt").read_text()
    assert cli.main(["seg", "synth", str(tmp_path / "v1"), "--ranges", "ood"]) == 2
    assert "ranges and degrade apply to generator version 2" in capsys.readouterr().err
    assert not (tmp_path / "v1").exists()


def test_degradations_keep_the_case_and_change_the_scan(mni):
    clean_v, clean_l = v2.make_case(mni, v2.case_rng(8, 0), "ood")
    for name in v2.DEGRADATIONS:
        v, labels = v2.make_case(mni, v2.case_rng(8, 0), "ood", degrade=name)
        np.testing.assert_array_equal(labels, clean_l)  # same anatomy and lesions
        assert not np.allclose(v["flair"], clean_v["flair"])
    quiet = dict(noise=(0.0, 0.0), low_resolution=0.0, bias_std=(0.0, 0.0), gamma_std=0.0)
    sharp = v2.make_case(mni, v2.case_rng(8, 0), "ood", degrade=quiet)[0]["t1"]
    blurred = v2.make_case(mni, v2.case_rng(8, 0), "ood", degrade={
        **quiet, **v2.DEGRADATIONS["4mm"], "isotropic_mm": (9.0, 9.0)})[0]["t1"]
    from scipy.ndimage import binary_erosion

    brain = binary_erosion(blurred > 0, iterations=3)  # away from the skull-stripped edge

    def roughness(x):
        return np.abs(np.diff(x, axis=0))[brain[1:] & brain[:-1]].mean() / x[brain].mean()

    assert roughness(blurred) < 0.8 * roughness(sharp)
    with pytest.raises(ValueError, match="degrade must be one of"):
        v2.make_case(mni, v2.case_rng(8, 0), degrade="blurry")
