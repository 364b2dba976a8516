"""Where the scans of a dataset are: BraTS 2021, BraTS 2023+, the Medical Segmentation
Decathlon, or a JSON / CSV manifest, each turned into a list of `Case`s.

BraTS label maps are turned into the three nested regions it is scored on:
whole tumour (WT), tumour core (TC) and enhancing tumour (ET).

Label schemes (`LABELS`): BraTS 2021 (1 NCR/NET, 2 ED, 4 ET), BraTS 2023 (1 NETC, 2 SNFH,
3 ET) and BraTS 2024 post-treatment glioma (2023's labels plus 4 RC, the resection cavity,
scored as its own region and part of no tumour region). Label 4 means ET in 2021 and RC in
2024, so a case's scheme comes from its names - `BraTS2021_XXXXX` is 2021,
`BraTS-GLI-XXXXX-YYY` is 2023 when YYY < 100 and post-treatment 2024 when YYY >= 100 - or
from an explicit `labels=` choice; `check_labels` refuses values outside the scheme.

>>> cases = discover("BraTS2021_Training_Data")      # doctest: +SKIP
>>> cases[0].images, cases[0].label                  # doctest: +SKIP
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

LAYOUTS = ("brats2021", "brats2023", "brats2024", "msd", "manifest")
LABEL_SCHEMES = ("brats2021", "brats2023", "brats2024")

# label values making up each region
REGIONS = {
    "brats2021": {"WT": (1, 2, 4), "TC": (1, 4), "ET": (4,)},
    "brats2023": {"WT": (1, 2, 3), "TC": (1, 3), "ET": (3,)},
    # BraTS 2024 post-treatment glioma: 4 = resection cavity, outside WT / TC / ET
    "brats2024": {"WT": (1, 2, 3), "TC": (1, 3), "ET": (3,), "RC": (4,)},
    # MSD Task01_BrainTumour: 1 oedema, 2 non-enhancing tumour, 3 enhancing tumour
    "msd_brats": {"WT": (1, 2, 3), "TC": (2, 3), "ET": (3,)},
}
# label values (background included) each scheme allows
LABELS = {"brats2021": (0, 1, 2, 4), "brats2023": (0, 1, 2, 3), "brats2024": (0, 1, 2, 3, 4),
          "msd_brats": (0, 1, 2, 3)}
MODALITIES = {
    "brats2021": ("flair", "t1", "t1ce", "t2"),
    "brats2023": ("t1n", "t1c", "t2w", "t2f"),
}


@dataclass
class Case:
    """One subject: its image files by modality (a 4D file lists (path, channel)), and its
    label file (None for inference-only cases)."""

    case_id: str
    images: dict  # modality -> path, or modality -> (path, channel) for 4D files
    label: Path | None = None
    layout: str = "manifest"
    regions: dict | None = None  # region name -> label values; None = labels as classes
    extra: dict = field(default_factory=dict)

    @property
    def modalities(self):
        return tuple(self.images)


def _nii(path: Path):
    for suffix in (".nii.gz", ".nii"):
        candidate = path.with_name(path.name + suffix)
        if candidate.is_file():
            return candidate
    return None


def _brats(root: Path, layout: str, pattern: str, sep: str, require_label: bool):
    cases = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and re.fullmatch(pattern, p.name)):
        images, missing = {}, []
        for modality in MODALITIES[layout]:
            found = _nii(folder / f"{folder.name}{sep}{modality}")
            if found is None:
                missing.append(f"{folder.name}{sep}{modality}.nii.gz")
            images[modality] = found
        if missing:
            raise FileNotFoundError(f"BraTS case {folder} lacks {', '.join(missing)}")
        label = _nii(folder / f"{folder.name}{sep}seg")
        if label is None and require_label:
            raise FileNotFoundError(f"BraTS case {folder} has no {folder.name}{sep}seg.nii.gz")
        scheme = brats_labels(folder.name)
        cases.append(Case(folder.name, images, label, layout, REGIONS[scheme],
                          {"labels": scheme}))
    return cases


def brats_labels(case_id):
    """The label scheme a BraTS case's name implies: 'BraTS2021_00000' -> 'brats2021',
    'BraTS-GLI-00000-000' -> 'brats2023', 'BraTS-GLI-00000-100' (second number >= 100,
    post-treatment) -> 'brats2024'; None for other names.

    >>> brats_labels("BraTS-GLI-02060-101")
    'brats2024'
    """
    if re.fullmatch(r"BraTS2021_\d+", case_id):
        return "brats2021"
    m = re.fullmatch(r"BraTS-[A-Z]+-\d+-(\d+)", case_id)
    if m:
        return "brats2024" if int(m.group(1)) >= 100 else "brats2023"
    return None


def label_scheme(case):
    """The label scheme of a case ('brats2021', 'brats2023', 'brats2024', 'msd_brats'),
    or None where labels are plain classes (manifests)."""
    return case.extra.get("labels") or ("msd_brats" if case.regions == REGIONS["msd_brats"]
                                        else None)


def check_labels(values, scheme, path):
    """Raise ValueError naming `path` when label `values` fall outside `scheme`."""
    if scheme not in LABELS:
        return
    bad = sorted(int(v) for v in set(np.asarray(values).ravel().tolist()) - set(LABELS[scheme]))
    if not bad:
        return
    hint = ""
    if scheme == "brats2023" and bad == [4]:
        hint = (" (label 4 is BraTS 2021's enhancing tumour and BraTS 2024's resection "
                "cavity; a case named BraTS-XXX-NNNNN-1YY is read as 2024)")
    raise ValueError(
        f"{path} has label values {bad} outside the {scheme} labels {list(LABELS[scheme])}"
        f"{hint}; choose the labels with --labels (labels=) from {', '.join(LABEL_SCHEMES)}")


def _msd(root: Path, require_label: bool):
    meta_path = root / "dataset.json"
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read {meta_path}: {e}") from None
    modality = meta.get("modality") or {"0": "image"}
    names = [modality[k].lower() for k in sorted(modality, key=int)]
    labels = {int(k): v.lower() for k, v in (meta.get("labels") or {}).items()}
    regions = None
    if {"edema", "non-enhancing tumor", "enhancing tumour"} <= set(labels.values()) or (
            "brain" in meta.get("name", "").lower() and len(labels) == 4):
        regions = REGIONS["msd_brats"]
    entries = meta.get("training") or []
    if not entries:
        raise ValueError(f"{meta_path} lists no training cases")
    cases = []
    for entry in entries:
        image = (root / entry["image"]).resolve()
        label = (root / entry["label"]).resolve() if entry.get("label") else None
        if not image.is_file():
            raise FileNotFoundError(f"{meta_path} lists {entry['image']}, which does not exist")
        if label is not None and not label.is_file():
            raise FileNotFoundError(f"{meta_path} lists {entry['label']}, which does not exist")
        if label is None and require_label:
            raise FileNotFoundError(f"{meta_path}: case {entry['image']} has no label")
        case_id = image.name.split(".nii")[0]
        images = ({names[0]: image} if len(names) == 1
                  else {n: (image, c) for c, n in enumerate(names)})
        cases.append(Case(case_id, images, label, "msd", regions, {"labels": labels}))
    return cases


def _manifest(path: Path, require_label: bool):
    """JSON: [{"id":..., "images": {"t1": "a.nii.gz", ...}, "label": "seg.nii.gz"}, ...];
    CSV: columns id, label and one column per modality. Paths are relative to the file."""
    base = path.parent
    if path.suffix == ".json":
        rows = json.loads(path.read_text())
        items = [(r.get("id") or r.get("case_id"), r["images"], r.get("label")) for r in rows]
    else:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            items = []
            for r in reader:
                case_id = r.pop("id", None) or r.pop("case_id", None)
                label = r.pop("label", None) or None
                items.append((case_id, {k: v for k, v in r.items() if v}, label))
    cases = []
    for i, (case_id, images, label) in enumerate(items):
        resolved = {m: (base / p).resolve() for m, p in images.items()}
        for m, p in resolved.items():
            if not p.is_file():
                raise FileNotFoundError(f"{path}: case {case_id or i}, {m} image {p} does not exist")
        label_path = (base / label).resolve() if label else None
        if label_path is not None and not label_path.is_file():
            raise FileNotFoundError(f"{path}: case {case_id or i}, label {label_path} does not exist")
        if label_path is None and require_label:
            raise FileNotFoundError(f"{path}: case {case_id or i} has no label")
        cases.append(Case(str(case_id or i), resolved, label_path, "manifest"))
    if not cases:
        raise ValueError(f"manifest {path} lists no cases")
    return cases


def detect(root) -> str:
    """Guess the layout of a dataset folder or manifest file."""
    root = Path(root)
    if root.is_file():
        if root.suffix in (".json", ".csv"):
            return "manifest"
        raise ValueError(f"{root} is not a dataset folder nor a .json/.csv manifest")
    if (root / "dataset.json").is_file():
        return "msd"
    names = [p.name for p in root.iterdir() if p.is_dir()]
    if any(re.fullmatch(r"BraTS2021_\d+", n) for n in names):
        return "brats2021"
    if any(re.fullmatch(r"BraTS-[A-Z]+-\d+-\d+", n) for n in names):
        return "brats2023"
    raise ValueError(
        f"cannot tell the layout of {root}: expected BraTS2021_XXXXX/ or BraTS-GLI-XXXXX-XXX/ "
        "case folders, an MSD dataset.json, or pass a manifest (.json/.csv)"
    )


def discover(root, layout="auto", require_label=True, labels=None):
    """The cases under `root` (a folder, or a manifest file for layout="manifest").

    `labels` ('brats2021' / 'brats2023' / 'brats2024') overrides the label scheme the
    names imply; layout 'brats2024' reads BraTS-XXX-NNNNN-NNN folders with 2024 labels.
    """
    root = Path(root)
    if labels is not None and labels not in LABEL_SCHEMES:
        raise ValueError(f"labels must be one of {', '.join(LABEL_SCHEMES)}, "
                         f"received labels={labels!r}")
    if layout == "brats2024":
        layout, labels = "brats2023", labels or "brats2024"
    if not root.exists():
        raise FileNotFoundError(f"dataset {root} does not exist")
    if layout == "brats":
        layout = "auto"
    layout = detect(root) if layout == "auto" else layout
    if layout == "brats2021":
        cases = _brats(root, layout, r"BraTS2021_\d+", "_", require_label)
    elif layout == "brats2023":
        cases = _brats(root, layout, r"BraTS-[A-Z]+-\d+-\d+", "-", require_label)
    elif layout == "msd":
        cases = _msd(root, require_label)
    elif layout == "manifest":
        cases = _manifest(root, require_label)
    else:
        raise ValueError(f"layout must be 'auto' or one of {LAYOUTS}, received layout={layout!r}")
    if not cases:
        raise ValueError(f"no {layout} cases found under {root}")
    if labels is not None:
        for case in cases:
            case.regions, case.extra["labels"] = REGIONS[labels], labels
    return cases


def to_regions(label_map, regions):
    """(X,Y,Z) integer labels -> (X,Y,Z,R) binary masks, one per region (WT, TC, ET)."""
    label_map = np.asarray(label_map)
    return np.stack([np.isin(label_map, values) for values in regions.values()], axis=-1).astype(
        np.uint8)


def from_regions(masks, regions, layout="brats2021"):
    """(X,Y,Z,R) region masks (WT, TC, ET[, RC]) -> a BraTS label map with the values of
    `regions` (the layout's when `regions` is None); RC is written outside the tumour."""
    wt, tc, et = (masks[..., i].astype(bool) for i in range(3))
    labels = regions if regions and {"WT", "TC", "ET"} <= set(regions) else REGIONS[layout]
    oedema = [v for v in labels["WT"] if v not in labels["TC"]][0]
    necrosis = [v for v in labels["TC"] if v not in labels["ET"]][0]
    out = np.zeros(masks.shape[:3], np.uint8)
    out[wt] = oedema
    out[wt & tc] = necrosis
    out[wt & tc & et] = labels["ET"][0]
    if "RC" in labels and masks.shape[-1] > list(labels).index("RC"):
        out[masks[..., list(labels).index("RC")].astype(bool) & ~wt] = labels["RC"][0]
    return out


def load_case(case: Case, nonfinite="zero"):
    """Read a case: -> (images (X,Y,Z,C) float32 RAS+, label (X,Y,Z) int or None, the
    reference Volume of its first image for writing results back).

    All images and the label must share one voxel grid (shape and affine); the error names
    the files otherwise.
    """
    from .nifti import check_same_grid, read_volume

    volumes, channels, cache = [], [], {}
    for modality, source in case.images.items():
        path, channel = source if isinstance(source, tuple) else (source, None)
        if path not in cache:
            cache[path] = read_volume(path, nonfinite)
        vol = cache[path]
        if channel is None and vol.data.ndim == 4:
            raise ValueError(f"{path} ({modality}) is 4D; list its channels separately")
        if channel is not None and (vol.data.ndim != 4 or channel >= vol.data.shape[3]):
            raise ValueError(f"{path} has no channel {channel} for modality {modality!r}")
        volumes.append(vol)
        channels.append(vol.data if channel is None else vol.data[..., channel])
    label = None
    if case.label is not None:
        label_vol = read_volume(case.label, nonfinite)
        volumes.append(label_vol)
        label = np.rint(label_vol.data).astype(np.int32)
        if label.ndim != 3:
            raise ValueError(f"label {case.label} must be 3D, received shape {label.shape}")
    check_same_grid(volumes)
    return np.stack(channels, axis=-1).astype(np.float32), label, volumes[0]
