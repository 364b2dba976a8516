"""The model registry: architectures (`ModelSpec`) and their weights (`WeightsEntry`) apart.

It imports nothing of the zoo; `catalog` imports the families, which register their
variants as data at import time:

    register(ModelSpec("nin_root8", family="nin", builder=partial(build_nin, groups=(8, 4)),
                       input_shape=(32, 32, 3), classes=10, paper=PaperFigures(...)))
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable
from dataclasses import dataclass, field

_REGISTRY: dict = {}
_ALIASES: dict = {}


PARAM_CONVENTIONS = {
    "all": "every weight, BatchNorm statistics included (keras' count_params)",
    "no_bn": "BatchNorm parameters not counted",
    "no_bn_no_fc": "neither BatchNorm nor the final fully connected layer counted",
    "bn_affine": "BatchNorm scale and offset counted, moving statistics not (PyTorch's count)",
}


@dataclass(frozen=True)
class PaperFigures:
    """What a paper reports for a model (MACs and params as plain counts).

    `param_convention` says what the paper's parameter count includes (PARAM_CONVENTIONS);
    `input_shape` is the input its MACs were counted at; `alternatives` holds the same
    model's figures from another paper (e.g. NiN in both papers); `checked=False` marks
    figures whose counting is not known well enough to hold a build to 1%.
    """

    reference: str
    macs: float | None = None
    params: float | None = None
    accuracy: str | None = None
    input_shape: tuple | None = None
    param_convention: str = "no_bn"
    notes: str = ""
    alternatives: tuple = ()
    checked: bool = True  # the fidelity test holds this build to 1% of these figures

    @property
    def label(self):
        """Short citation: 'Ioannou et al. CVPR 2017'."""
        venue = re.search(r"\b([A-Z][A-Za-z]+ \d{4})\b", self.reference)
        return self.reference.split(",")[0] + (f" {venue.group(1)}" if venue else "")


@dataclass(frozen=True)
class WeightsEntry:
    """One set of weights for a registered model.

    `source` is one of "package:<path inside keras_priors>", "resource:<module>/<path>"
    (a file of an installed package) or an http(s) URL (downloaded once into the cache,
    KERAS_PRIORS_HOME). `sha256` is always checked before loading. `loader` names how the
    file is read: "keras" (a `.weights.h5`) or a family-specific reader registered on the
    ModelSpec (`weight_loader`).
    """

    tag: str
    source: str
    sha256: str
    preprocessing: str
    classes: int
    input_shape: tuple | None = None
    loader: str = "keras"
    description: str = ""
    card: str | None = None
    build_kwargs: dict = field(default_factory=dict)  # architecture options, e.g. width=0.25
    extra: dict = field(default_factory=dict)  # e.g. a segmentation model's regions, spacing


@dataclass(frozen=True)
class ModelSpec:
    """An architecture: `builder(include_top, input_shape, classes, pooling,
    classifier_activation, name) -> keras.Model`, plus what `info` reports."""

    name: str
    family: str
    builder: Callable
    input_shape: tuple
    classes: int
    preprocessing: str = "none"
    paper: PaperFigures | None = None
    description: str = ""
    weights: dict = field(default_factory=dict)
    weight_loader: Callable | None = None  # (model, path, entry) -> None, for loader != "keras"
    min_input: int = 32
    default_activation: str = "softmax"  # of the output layer when load() is not told


def register(spec: ModelSpec, aliases=()):
    if spec.name in _REGISTRY or spec.name in _ALIASES:
        raise ValueError(f"model name {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec
    for alias in aliases:
        _ALIASES[alias] = spec.name
    return spec


def add_weights(name, entry: WeightsEntry):
    """Attach a weights entry to an already registered model."""
    spec = _REGISTRY[name]
    spec.weights[entry.tag] = entry


def names(include_aliases=False):
    out = sorted(_REGISTRY)
    return out + sorted(_ALIASES) if include_aliases else out


def aliases():
    return dict(_ALIASES)


def get(name) -> ModelSpec:
    """The spec of `name` (aliases resolved); unknown names suggest the closest."""
    if not isinstance(name, str):
        raise ValueError(f"model name must be a string, received name={name!r}")
    key = _ALIASES.get(name, name)
    if key not in _REGISTRY:
        choices = list(_REGISTRY) + list(_ALIASES)
        near = difflib.get_close_matches(name, choices, n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(repr(n) for n in near)}?" if near else ""
        raise ValueError(
            f"Unknown model name={name!r}.{hint} See keras_priors.zoo.list_models() for all "
            f"{len(_REGISTRY)} models."
        )
    return _REGISTRY[key]
