"""BraTS metrics on small hand-built masks (1 mm voxels unless said), each worked out by hand
in the comments: NSD, the lesion-wise rules of BraTS 2023/2024 and of BraTS 2025."""

import numpy as np
import pytest

from keras_priors.volumetric import metrics


def box(shape, *ranges):
    m = np.zeros(shape, bool)
    m[tuple(slice(a, b) for a, b in ranges)] = True
    return m


S = (40, 20, 20)


def test_nsd_of_a_cube_shifted_by_one_voxel():
    # a 6^3 cube and the same cube one voxel further along x. Each border has
    # 6^3 - 4^3 = 152 voxels; the two borders share the 20-voxel rings of the 5 common
    # x-slices (100 voxels), all other border voxels are exactly 1 voxel from the other
    # border. Tolerance 0.5 mm: 100/152 on both sides; 1 mm: everything.
    a = box((12, 12, 12), (2, 8), (3, 9), (3, 9))
    b = np.roll(a, 1, axis=0)
    assert metrics.nsd(b, a, tolerance=0.5) == pytest.approx(100 / 152)
    assert metrics.nsd(b, a) == 1.0  # default tolerance: the voxel spacing (1 mm)
    # 2 mm voxels along x: the shift is 2 mm, beyond the default tolerance min(spacing) =
    # 1 mm, but the outer 12 voxels of each x-face's 4x4 inside lie 1 mm (along y or z)
    # from the other border's ring in the same slice: (100 + 12) / 152
    assert metrics.nsd(b, a, spacing=(2.0, 1.0, 1.0)) == pytest.approx(112 / 152)
    assert metrics.nsd(b, a, spacing=(2.0, 1.0, 1.0), tolerance=2.0) == 1.0
    empty = np.zeros_like(a)
    assert metrics.nsd(empty, empty) == 1.0 and metrics.nsd(a, empty) == 0.0


def test_2023_dilation_merges_two_ground_truth_pieces():
    # two 4^3 GT cubes (64 mm^3 each) 2 voxels apart: 3 dilations join them into one
    # lesion of 128 mm^3. The prediction is the first cube only, so the one lesion has
    # Dice 2*64/(128+64) = 2/3, TP 1, FN 0. (Unmerged it would be (1 + 0)/2 with a FN.)
    gt = box(S, (2, 6), (2, 6), (2, 6)) | box(S, (8, 12), (2, 6), (2, 6))
    pred = box(S, (2, 6), (2, 6), (2, 6))
    r = metrics.lesionwise_2023(pred, gt)
    assert (r["tp"], r["fp"], r["fn"]) == (1, 0, 0)
    assert r["dice"] == pytest.approx(2 / 3)
    far = box(S, (2, 6), (2, 6), (2, 6)) | box(S, (30, 34), (2, 6), (2, 6))
    r = metrics.lesionwise_2023(pred, far)  # 22 voxels apart: two lesions, one missed
    assert (r["tp"], r["fp"], r["fn"]) == (1, 0, 1) and r["dice"] == pytest.approx(0.5)


def test_2023_small_ground_truth_lesion_is_dropped():
    # a 5^3 lesion (125 mm^3) and a 2x4x5 = 40 mm^3 one far away; the 40 mm^3 lesion is
    # left out whether it is missed or found, and a prediction on it is no false positive
    big, small = box(S, (2, 7), (2, 7), (2, 7)), box(S, (30, 32), (10, 14), (10, 15))
    for pred in (big, big | small):
        r = metrics.lesionwise_2023(pred, big | small)
        assert r == {"dice": 1.0, "hd95": 0.0, "tp": 1, "fp": 0, "fn": 0}
    # a 1 mm^3 threshold (other challenges) keeps it: (1 + 0) / 2 and (0 + 374) / 2 missed
    r = metrics.lesionwise_2023(big, big | small, min_volume=1.0)
    assert (r["dice"], r["fn"], r["hd95"]) == (0.5, 1, pytest.approx(374 / 2))


def test_2023_false_positive_and_missed_lesion():
    gt = box(S, (2, 7), (2, 7), (2, 7))
    fp = box(S, (30, 33), (10, 13), (10, 13))  # far from the dilated GT
    r = metrics.lesionwise_2023(gt | fp, gt)
    # (Dice 1 + 0) / (1 lesion + 1 FP); HD95 (0 + 374) / 2
    assert r == {"dice": 0.5, "hd95": 187.0, "tp": 1, "fp": 1, "fn": 0}
    missed = box(S, (30, 35), (10, 15), (10, 15))
    r = metrics.lesionwise_2023(gt, gt | missed)
    assert r == {"dice": 0.5, "hd95": 187.0, "tp": 1, "fp": 0, "fn": 1}
    # a separate 3x5x5 prediction 2 voxels beside the GT (inside its dilation) is matched,
    # not a FP; the lesion's Dice is against both components: 2*125 / (125 + 125 + 75)
    near = box(S, (9, 12), (2, 7), (2, 7))
    r = metrics.lesionwise_2023(gt | near, gt)
    assert (r["tp"], r["fp"]) == (1, 0) and r["dice"] == pytest.approx(250 / 325)


def test_two_touching_lesions_are_one_component():
    # two 4^3 cubes sharing a face are one 26-connected lesion (128 voxels); predicting
    # one of them scores 2*64/(64+128) under both rules
    gt = box(S, (2, 6), (2, 6), (2, 6)) | box(S, (6, 10), (2, 6), (2, 6))
    pred = box(S, (2, 6), (2, 6), (2, 6))
    assert metrics.components(gt)[1] == 1
    assert metrics.lesionwise_2023(pred, gt)["dice"] == pytest.approx(2 / 3)
    r = metrics.lesionwise_2025(pred, gt)
    assert (r["tp"], r["fp"], r["fn"]) == (1, 0, 0) and r["dice"] == pytest.approx(2 / 3)
    # cubes touching only at a corner are still one component (26-connectivity)
    corner = box(S, (2, 6), (2, 6), (2, 6)) | box(S, (6, 10), (6, 10), (6, 10))
    assert metrics.components(corner)[1] == 1


def test_empty_cases():
    empty, gt = np.zeros(S, bool), box(S, (2, 7), (2, 7), (2, 7))
    assert metrics.lesionwise_2023(empty, empty) == {"dice": 1.0, "hd95": 0.0, "tp": 0,
                                                     "fp": 0, "fn": 0}
    assert metrics.lesionwise_2023(empty, gt) == {"dice": 0.0, "hd95": 374.0, "tp": 0,
                                                  "fp": 0, "fn": 1}
    assert metrics.lesionwise_2023(gt, empty) == {"dice": 0.0, "hd95": 374.0, "tp": 0,
                                                  "fp": 1, "fn": 0}
    both = metrics.lesionwise_2025(empty, empty)
    assert both["dice"] is None and both["hd95"] is None and both["f1"] is None
    assert metrics.lesionwise_2025(empty, gt) == {"dice": 0.0, "nsd": 0.0, "hd95": 373.0,
                                                  "tp": 0, "fp": 0, "fn": 1, "f1": 0.0}
    assert metrics.lesionwise_2025(gt, empty)["fp"] == 1


def test_2025_matching_is_bipartite_not_greedy():
    # one z-slice; GT A = 10x4 (40 voxels), B = 4x4 (16); prediction P = 9x2 (18) overlaps
    # A by 10 and B by 4, Q = 4x1 (4) overlaps A by 4.
    # Dice(P,A) = 20/58, Dice(P,B) = 8/34, Dice(Q,A) = 8/44, Dice(Q,B) = 0.
    # Greedy takes P-A and leaves Q and B alone (TP 1); the best one-to-one matching is
    # P-B + Q-A (8/34 + 8/44 = 0.417 > 20/58 = 0.345): TP 2, mean Dice (8/34 + 8/44) / 2.
    shape = (20, 8, 3)
    a, b = box(shape, (0, 10), (0, 4), (1, 2)), box(shape, (12, 16), (0, 4), (1, 2))
    p, q = box(shape, (5, 14), (0, 2), (1, 2)), box(shape, (0, 4), (3, 4), (1, 2))
    r = metrics.lesionwise_2025(p | q, a | b)
    assert (r["tp"], r["fp"], r["fn"], r["f1"]) == (2, 0, 0, 1.0)
    assert r["dice"] == pytest.approx((8 / 34 + 8 / 44) / 2)
    # one GT lesion split into two predicted pieces: one match, the other piece is a FP;
    # F1 = 1 / (1 + 0.5)
    gt = box(S, (2, 12), (2, 6), (2, 6))
    split = box(S, (2, 8), (2, 6), (2, 6)) | box(S, (9, 12), (2, 6), (2, 6))
    r = metrics.lesionwise_2025(split, gt)
    assert (r["tp"], r["fp"], r["fn"]) == (1, 1, 0) and r["f1"] == pytest.approx(2 / 3)
    assert r["dice"] == pytest.approx(2 * 96 / (160 + 96))


def test_2025_scores_equal_the_global_ones_for_a_single_lesion():
    # one lesion each side: the matched pair is the whole masks, so the lesion-wise
    # Dice / NSD / HD95 are the global ones (pooled HD95 as brats-evaluation)
    a = box((16, 16, 16), (2, 8), (3, 9), (3, 9))
    b = np.roll(a, 1, axis=0)
    r = metrics.lesionwise_2025(b, a, spacing=(1.0, 1.5, 2.0))
    assert r["dice"] == pytest.approx(metrics.dice(b, a))
    assert r["hd95"] == pytest.approx(metrics.hd95(b, a, (1.0, 1.5, 2.0)))
    assert r["nsd"] == pytest.approx(metrics.nsd(b, a, (1.0, 1.5, 2.0)))


def test_surfel_hd95_of_a_shifted_cube():
    # every corner-grid surface element of a cube shifted by one voxel is 0 or 1 voxel from
    # the other surface, and the x-faces (1 voxel away) hold 2 of the 6 equal faces: more
    # than 5 % of the area, so the 95th percentile is 1 voxel = the spacing along x
    a = box((12, 12, 12), (2, 8), (3, 9), (3, 9))
    b = np.roll(a, 1, axis=0)
    assert metrics.surfel_hd95(b, a) == pytest.approx(1.0)
    assert metrics.surfel_hd95(b, a, (2.0, 1.0, 1.0)) == pytest.approx(2.0)
    assert metrics.surfel_hd95(a, a) == 0.0
    assert metrics.surfel_hd95(a, np.zeros_like(a)) == float("inf")
    # one corner inside: one triangle through 3 edge midpoints, area sqrt(3)/8
    table = metrics._code_normals()
    assert table.shape == (256, 4, 3) and np.linalg.norm(table[1], axis=-1).sum() == \
        pytest.approx(np.sqrt(3) / 8)


def test_metric_names_and_aliases():
    assert metrics.metric_names("global,lesionwise,nsd") == ["global", "lesionwise_2023", "nsd"]
    assert metrics.metric_names(["lesionwise_2025"]) == ["lesionwise_2025"]
    with pytest.raises(ValueError, match="unknown metric 'lesionwize'.*did you mean"):
        metrics.metric_names("lesionwize")


def test_cli_evaluate_writes_json_and_never_overwrites_it(tmp_path, capsys):
    import json

    import nibabel as nib

    from keras_priors import cli
    from keras_priors.volumetric import synthetic

    data, preds = tmp_path / "data", tmp_path / "preds"
    synthetic.write_cases(data, n=2, seed=3, downsample=4)
    preds.mkdir()
    for case in sorted(data.iterdir()):  # the reference itself as the prediction
        img = nib.load(case / f"{case.name}_seg.nii.gz")
        nib.save(img, preds / f"{case.name}_seg.nii.gz")
    out = tmp_path / "scores.json"
    argv = ["seg", "evaluate", "--pred", str(preds), "--data", str(data),
            "--metrics", "global,lesionwise,nsd,lesionwise_2025", "--json", str(out)]
    assert cli.main(argv) == 0
    table = capsys.readouterr().out
    assert "LW23 Dice" in table and "LW25 NSD" in table and "WT" in table
    scores = json.loads(out.read_text())
    assert scores["cases"] == 2 and scores["labels"]["BraTS2021_00000"] == "brats2021"
    assert scores["dice"]["WT"] == 1.0 and scores["mean"]["lesionwise_2023"]["WT"]["fp"] == 0
    assert scores["mean"]["lesionwise_2025"]["TC"]["f1"] == 1.0
    assert set(scores["per_case"]) == {"BraTS2021_00000", "BraTS2021_00001"}
    before = out.read_bytes()
    assert cli.main(argv) == 2 and "--force" in capsys.readouterr().err
    assert out.read_bytes() == before
    assert cli.main(argv + ["--force"]) == 0
    capsys.readouterr()
    assert cli.main(argv[:-2] + ["--json", "-"]) == 0
    assert json.loads(capsys.readouterr().out)["cases"] == 2
    assert cli.main(argv[:6] + ["--metrics", "dice"]) == 2
    assert "unknown metric 'dice'" in capsys.readouterr().err
