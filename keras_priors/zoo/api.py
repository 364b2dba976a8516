"""`load`, `list_models` and `info`: the zoo's public face (keras.applications style)."""

from __future__ import annotations

import fnmatch
import functools
import os
import re
import warnings
from pathlib import Path

import keras

from . import registry
from . import weights as weights_lib


def list_models(pattern="*", pretrained=None):
    """Registered model names matching a glob `pattern`, sorted.

    `pretrained=True` keeps models with at least one weight tag, `False` those without.

    >>> list_models("nin_root*")
    ['nin_root16', 'nin_root2', 'nin_root4', 'nin_root8']
    """
    out = []
    for name in registry.names():
        if not fnmatch.fnmatchcase(name, pattern):
            continue
        has = bool(registry.get(name).weights)
        if pretrained is None or has == bool(pretrained):
            out.append(name)
    return out


def _weights_choice(spec, weights):
    """-> (WeightsEntry or None, user path or None); a user file is checked to be readable."""
    if weights is None:
        return None, None
    if isinstance(weights, str) and weights in spec.weights:
        return spec.weights[weights], None
    if isinstance(weights, (str, os.PathLike)):
        path = Path(weights)
        looks_like_file = path.suffix in (".h5", ".keras") or os.sep in str(weights)
        if path.is_file():
            return None, weights_lib.check_readable(path)
        if looks_like_file:
            raise ValueError(f"weights file {str(weights)!r} does not exist")
    tags = ", ".join(repr(t) for t in spec.weights) or "none"
    raise ValueError(
        f"weights={weights!r} is neither a weight tag of {spec.name!r} (available: {tags}) "
        "nor the path of an existing weights file"
    )


def check_weights(name, weights):
    """Check, without building anything, that `weights` (a tag or a path) can be loaded into
    zoo model `name`: the tag exists, or the file exists and is a readable .keras archive or
    HDF5 weights file. Returns the entry (tag) or the path.

    >>> check_weights("nin_root8", "fashion_mnist").tag
    'fashion_mnist'
    """
    entry, path = _weights_choice(registry.get(name), weights)
    return entry if entry is not None else path


def _copy_by_name(source, target, file=None):
    """Copy weights layer by layer (matched by name) from `source` to `target`; every target
    layer with weights must find a source layer of the same name and weight shapes."""
    by_name = {layer.name: layer for layer in source.layers}
    what = f"model file {file}" if file else f"model {source.name!r}"
    missing = [layer.name for layer in target.layers if layer.weights and layer.name not in by_name]
    if missing:
        raise ValueError(f"{what} does not match model {target.name!r}: it has no layer "
                         f"{', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''} "
                         f"({len(missing)} of {sum(bool(la.weights) for la in target.layers)} "
                         "layers with weights missing)")
    for layer in target.layers:
        if not layer.weights:
            continue
        have = [tuple(w.shape) for w in by_name[layer.name].weights]
        want = [tuple(w.shape) for w in layer.weights]
        if have != want:
            raise ValueError(f"{what} does not match model {target.name!r}: layer {layer.name!r} "
                             f"expects weight shapes {want}, the file has {have}")
        layer.set_weights(by_name[layer.name].get_weights())


def _mismatch(error, file, model):
    """One paragraph for keras' load_weights error: the layer, both shapes, no values."""
    text = str(error)
    count = re.search(r"A total of (\d+) objects could not be loaded", text)
    shapes = re.search(r"variable\.shape=(\([^)]*\)), Received: value\.shape=(\([^)]*\))", text)
    var = re.search(r"Target variable: <Variable path=([^,>]+)", text)
    head = f"weights file {file} does not match model {model.name!r}"
    if count:
        head += f": {count.group(1)} layers could not be loaded"
    if shapes and var:
        return f"{head}; {var.group(1)} expects shape {shapes.group(1)}, the file has {shapes.group(2)}"
    detail = re.search(r"Example error message for object <[^>]*>:\s*(.+)", text)
    line = (detail.group(1) if detail else text).strip().splitlines()[0]
    line = re.split(r"\s*(?:Target variable|value=)", line)[0]
    return f"{head}; e.g. {line[:300]}"


def _load_file(model, path, entry, spec):
    if entry is not None and entry.loader != "keras":
        if spec.weight_loader is None:
            raise ValueError(f"{spec.name!r} has no reader for {entry.loader!r} weights")
        spec.weight_loader(model, path, entry)
    elif str(path).endswith(".keras"):
        _copy_by_name(keras.saving.load_model(path, compile=False), model, path)
    else:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                model.load_weights(path)
            except ValueError as e:  # keras lists every value of the first bad tensor
                raise ValueError(_mismatch(e, path, model)) from None
        for w in caught:  # loaded: the warnings were about this file, pass them on
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


def _build(spec, include_top, input_shape, classes, pooling, classifier_activation, options):
    try:
        return spec.builder(include_top, input_shape, classes, pooling, classifier_activation,
                            spec.name, **options)
    except TypeError as e:
        if options and "unexpected keyword" in str(e):
            raise ValueError(
                f"{spec.name!r} takes no architecture option(s) {sorted(options)} "
                f"(family {spec.family!r})"
            ) from None
        raise


def _check_input_shape(spec, weights, entry, input_shape):
    """Weights fix the input's rank and channels (spatial sizes may differ where the model is
    fully convolutional or globally pooled)."""
    want = entry.input_shape
    if want is None or input_shape is None:
        return
    have = tuple(input_shape)
    if len(have) != len(want) or have[-1] != want[-1]:
        raise ValueError(
            f"weights={weights!r} of {spec.name!r} were made for input_shape={tuple(want)}, but "
            f"input_shape={have} was requested: the weights need rank {len(want)} inputs with "
            f"{want[-1]} channel(s); build without weights for other inputs")


def load(name, weights=None, include_top=True, input_shape=None, classes=None, pooling=None,
         classifier_activation=None, **options):
    """Build a zoo model, optionally with weights (a tag such as "imagenet", or a path).

    Like keras.applications: `include_top=False` drops the classifier (then `pooling`
    None/"avg"/"max" applies), `classes` sizes the head, `input_shape` defaults to the
    model's, `classifier_activation` to the model's (softmax for classifiers, sigmoid for
    the region outputs of the 3D U-Nets). `options` are the family's architecture options (`width=0.5` for nin and
    resnet_cifar). Weight files are always checked against their sha256 before loading.
    Weights fix the input's channels (an `input_shape` with other channels is an error
    naming both shapes); other spatial sizes work where the family is fully convolutional
    or globally pooled. A user's file that is unreadable or made for another architecture
    is an error naming the file and the first layer that does not match.

    >>> import keras_priors
    >>> model = keras_priors.zoo.load("nin_root8", input_shape=(28, 28, 1))
    >>> model.output_shape
    (None, 10)
    """
    spec = registry.get(name)
    if classes is not None and (isinstance(classes, bool) or not isinstance(classes, int)
                                or classes < 1):
        raise ValueError(f"classes must be a positive integer, received classes={classes!r}")
    classifier_activation = classifier_activation or spec.default_activation
    entry, path = _weights_choice(spec, weights)
    if entry is not None:
        if classes is not None and include_top and classes != entry.classes:
            raise ValueError(
                f"weights={weights!r} of {spec.name!r} have a {entry.classes}-class head but "
                f"classes={classes} was requested; pass include_top=False to use the weights "
                "as a feature extractor with your own head"
            )
        if input_shape is None and entry.input_shape is not None:
            input_shape = entry.input_shape
        _check_input_shape(spec, weights, entry, input_shape)
        for key, value in entry.build_kwargs.items():
            if options.setdefault(key, value) != value:
                raise ValueError(
                    f"weights={weights!r} of {spec.name!r} are for {key}={value}, but "
                    f"{key}={options[key]} was requested"
                )
    head_classes = classes or (entry.classes if entry else spec.classes)
    model = _build(spec, include_top, input_shape, head_classes, pooling, classifier_activation,
                   options)
    if entry is None and path is None:
        return model
    file = weights_lib.resolve(entry) if entry is not None else path
    if include_top:
        target = model
    else:  # load into the full model the weights were made for, then keep the trunk
        target = _build(spec, True, input_shape, entry.classes if entry else spec.classes,
                        None, classifier_activation, options)
    try:
        _load_file(target, file, entry, spec)
    except ValueError as e:
        message = str(e) if str(file) in str(e) else (
            f"could not load weights {str(file)!r} into {spec.name!r}: {e}")
        if (entry is not None and entry.input_shape and input_shape is not None
                and tuple(input_shape) != entry.input_shape):
            message += (f" (weights={weights!r} were made for input_shape={entry.input_shape}; "
                        f"input_shape={tuple(input_shape)} was requested)")
        raise ValueError(message) from None
    if target is not model:
        _copy_by_name(target, model)
    return model


@functools.cache
def _build_figures(name):
    from .fidelity import build_figures

    return build_figures(name)


def info(name):
    """What the zoo knows about `name`: paper figures beside this build's, weights, inputs.

    >>> info("resnet50_root")["paper"]["macs"]
    2115000000
    """
    spec = registry.get(name)
    paper = spec.paper
    out = {
        "name": spec.name,
        "aliases": sorted(a for a, t in registry.aliases().items() if t == spec.name),
        "family": spec.family,
        "description": spec.description,
        "input_shape": spec.input_shape,
        "classes": spec.classes,
        "preprocessing": spec.preprocessing,
        "weights": {
            tag: {"source": e.source, "sha256": e.sha256, "classes": e.classes,
                  "preprocessing": e.preprocessing, "description": e.description,
                  "card": e.card}
            for tag, e in spec.weights.items()
        },
        "paper": None,
        "build": _build_figures(spec.name),
    }
    if paper is not None:
        out["paper"] = {
            "reference": paper.reference, "macs": paper.macs, "params": paper.params,
            "accuracy": paper.accuracy, "input_shape": paper.input_shape,
            "param_convention": registry.PARAM_CONVENTIONS[paper.param_convention],
            "notes": paper.notes,
        }
    return out
