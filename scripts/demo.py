"""The main job, end to end: structured layers, the zoo, and a real pretrained classifier.

    pip install -e ".[examples]" && python scripts/demo.py

1. A root layer and a low-rank layer equal plain convs with block-diagonal / embedded
   kernels (the structural prior is exact, not an approximation).
2. `zoo.load("resnet50_root")` beside `resnet50`: parameters and MACs of this build next to
   the Deep Roots paper's.
3. EfficientNet-Lite0 with its real ImageNet weights classifies scikit-image's photos.
4. A short real training run on Fashion-MNIST, then the shipped Fashion-MNIST weights of
   nin and nin_root8 evaluated on the full test set.
5. Volumetric: synthetic BraTS cases painted on real brains (Colin27, MNI152) written as
   NIfTI, a low-rank 3D U-Net trained for a few steps, sliding-window prediction written
   back in each scan's orientation, Dice per region.
6. Export: the shipped nin_root8 as a full-integer int8 TFLite for the Edge TPU, checked
   against the Edge TPU op table and against Keras on real Fashion-MNIST test images.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_priors import complexity, zoo  # noqa: E402
from keras_priors.layers import RootConv2D  # noqa: E402


def layers_demo():
    print("== 1. a root layer is a conv with a block-diagonal kernel")
    x = np.random.default_rng(0).normal(size=(1, 16, 16, 32)).astype("float32")
    root = RootConv2D(64, 3, groups=8, padding="same")
    y = keras.ops.convert_to_numpy(root(x))
    kernel = keras.ops.convert_to_numpy(root.kernel)
    full = np.zeros((3, 3, 32, 64), "float32")
    for g in range(8):
        full[:, :, 4 * g:4 * g + 4, 8 * g:8 * g + 8] = kernel[..., 8 * g:8 * g + 8]
    ref = keras.ops.convert_to_numpy(keras.ops.conv(x, full, padding="same")) + root.bias.numpy()
    print(f"   RootConv2D(64, 3, groups=8) vs plain conv: max |diff| = {np.abs(y - ref).max():.1e}, "
          f"params {root.count_params():,} vs {full.size + 64:,}")


def zoo_demo():
    print("\n== 2. the Deep Roots headline model against its baseline (224x224, ImageNet head)")
    for name in ("resnet50", "resnet50_root"):
        info = zoo.info(name)
        model = zoo.load(name)
        prof = complexity.profile(model, verbose=False)
        paper = info["paper"]
        print(f"   {name:14s} build: {prof.total_macs / 1e9:.3f} GMACs, "
              f"{info['build']['params_paper_convention'] / 1e6:.2f} M params (no BN) | paper: "
              f"{paper['macs'] / 1e9:.3f} GMACs, {paper['params'] / 1e6:.2f} M")
        keras.backend.clear_session()


def classify_demo():
    import skimage.data

    from keras_priors.zoo import imagenet

    print("\n== 3. EfficientNet-Lite0, real ImageNet weights (read from the installed package)")
    model = zoo.load("efficientnet_lite0", weights="imagenet")
    photos = ("chelsea", "coffee", "rocket")
    images = np.stack([imagenet.load_image(getattr(skimage.data, p)()) for p in photos])
    probs = model.predict(zoo.preprocess_input(images, "efficientnet_lite0"), verbose=0)
    for photo, top in zip(photos, zoo.decode_predictions(probs, top=3)):
        best = ", ".join(f"{name} {score:.2f}" for _, name, score in top)
        print(f"   skimage.data.{photo}(): {best}")


def training_demo():
    import tempfile

    from keras_priors import training

    print("\n== 4. training on real Fashion-MNIST (a short run), then the shipped weights")
    cfg = training.TrainConfig("nin_root8", epochs=1, width=1 / 3, limit_train=30000,
                               warmup_epochs=0.2)
    with tempfile.TemporaryDirectory() as out:
        r = training.fit(cfg, out, verbose=0)
    print(f"   nin_root8 (width 1/3), 1 epoch on 30,000 images: test accuracy "
          f"{r['accuracy']:.3f} ({r['train_seconds']:.0f} s)")
    for name in ("nin", "nin_root8"):
        if "fashion_mnist" not in zoo.info(name)["weights"]:
            continue
        r = training.evaluate(name, "fashion_mnist", "fashion_mnist")
        print(f"   {name:10s} weights 'fashion_mnist': accuracy {r['accuracy']:.4f} on 10,000 "
              f"test images, {r['macs'] / 1e6:.1f} MMACs, {r['params']:,} params")


def volumetric_demo():
    import tempfile
    from pathlib import Path

    from keras_priors import volumetric as seg
    from keras_priors.volumetric import synthetic

    print("\n== 5. 3D segmentation on NIfTI: synthetic lesions on real anatomy (not clinical)")
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "synthetic_brats"
        synthetic.write_cases(data, n=6, seed=0, downsample=3)
        cfg = seg.SegConfig(model="unet3d_lowrank", data=str(data), patch=(32, 32, 32),
                            widths=(8, 16, 32), epochs=12, steps_per_epoch=12, batch_size=2,
                            learning_rate=3e-3, val_fraction=0.34, foreground=0.7)
        result = seg.fit_segmentation(cfg, Path(tmp) / "run", verbose=0)
        written = seg.predict(Path(tmp) / "run", data, Path(tmp) / "pred", progress=None)
        scores = seg.evaluate_predictions(Path(tmp) / "pred", data)
        case = sorted(data.iterdir())[0]  # the shipped model, on a 3 mm case (resampled to 2 mm)
        seg.predict("unet3d_lowrank", case, Path(tmp) / "shipped", weights="synthetic_brats",
                    progress=None)
        shipped = seg.evaluate_predictions(Path(tmp) / "shipped", data)
    dice = ", ".join(f"{k} {v:.2f}" for k, v in result["dice"].items())
    print(f"   unet3d_lowrank, {result['epochs']} short epochs ({result['train_seconds']:.0f} s, "
          f"a short run, far from converged): held-out Dice {dice}")
    print(f"   wrote {len(written)} label maps; Dice over all cases: "
          + ", ".join(f"{k} {v:.2f}" for k, v in scores["dice"].items()))
    print(f"   shipped weights synthetic_brats on {case.name}: Dice "
          + ", ".join(f"{k} {v:.2f}" for k, v in shipped["dice"].items()))


def export_demo():
    import tempfile

    from keras_priors import tflite_export

    print("\n== 6. int8 TFLite for the Edge TPU: the shipped nin_root8 (Fashion-MNIST)")
    with tempfile.TemporaryDirectory() as tmp:
        report = tflite_export.export(
            "nin_root8", f"{tmp}/nin_root8_edgetpu.tflite", weights="fashion_mnist",
            quantization="int8", target="edgetpu", representative_data="fashion_mnist",
            calibration_samples=200, verify_data="fashion_mnist", verify_samples=500)
    tpu, agree = report.edgetpu, report.agreement
    print(f"   {report.file_size_bytes / 1024:.0f} KiB, tensors {report.tensor_dtypes}; "
          f"{tpu['partition']['summary']}; {tpu['compiler']['message']}")
    print(f"   int8 vs Keras on {agree['examples']} real test images: top-1 agreement "
          f"{agree['top1_agreement']:.3f} ({agree['top1_agreement_ties']:.3f} counting exact "
          f"ties); LiteRT latency {report.latency_ms['1']:.2f} ms (1 thread)")


if __name__ == "__main__":
    layers_demo()
    zoo_demo()
    classify_demo()
    training_demo()
    volumetric_demo()
    export_demo()
