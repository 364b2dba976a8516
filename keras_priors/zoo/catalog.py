"""Everything the zoo holds: importing the family modules registers their models, and the
weights shipped in keras_priors/zoo/weights/<tag>/manifest.json are attached to them."""

from __future__ import annotations

import json
from pathlib import Path

from . import efficientnet_lite, nin, resnet, resnet_cifar, unet3d, vgg  # noqa: F401  (register)
from .registry import WeightsEntry, add_weights

WEIGHTS_DIR = Path(__file__).parent / "weights"


def read_manifests(root=WEIGHTS_DIR):
    """Register the weights listed in `<root>/<tag>/manifest.json` under weight tag <tag>."""
    for manifest in sorted(Path(root).glob("*/manifest.json")):
        tag = manifest.parent.name
        for model, e in json.loads(manifest.read_text()).items():
            recipe = e.get("recipe", {})
            build = {k: tuple(v) if isinstance(v, list) else v
                     for k, v in recipe.items() if k in ("width", "widths") and v is not None}
            add_weights(model, WeightsEntry(
                tag=tag, source=f"package:{e['file']}", sha256=e["sha256"],
                preprocessing=e.get("preprocessing", tag), classes=e.get("classes", 10),
                input_shape=tuple(e.get("input_shape", (28, 28, 1))), loader="keras",
                description=_describe(tag, e), card=e.get("card"), build_kwargs=build,
                extra=e.get("segmentation", {}),
            ))


def _describe(tag, e):
    if "accuracy" in e:
        score = f"{100 * e['accuracy']:.2f}% test accuracy"
    else:
        score = "held-out Dice " + ", ".join(f"{k} {v:.3f}" for k, v in e["dice"].items())
    return f"trained on {tag} here: {score} (see {e.get('card')})"


read_manifests()
