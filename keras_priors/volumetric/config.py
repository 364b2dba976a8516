"""The configuration of a segmentation run and the model it builds."""

from __future__ import annotations

from dataclasses import dataclass

from .. import zoo

RECOMPUTE = {"on": True, "off": False, "per_sample": "per_sample"}


@dataclass
class SegConfig:
    model: str = "unet3d_lowrank"
    data: str = ""
    layout: str = "auto"
    patch: tuple = (64, 64, 64)
    batch_size: int = 2
    epochs: int = 10
    steps_per_epoch: int | None = None  # default: 2 patches per training case
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    seed: int = 0
    val_fraction: float = 0.2
    widths: tuple | None = None
    width: float = 1.0
    foreground: float = 0.5
    rotate: float = 0.0
    overlap: float = 0.5
    val_every: int = 1  # epochs between validations during training (0: only at the end)
    val_cases: int = 3  # held-out cases scored during training (all are scored at the end)
    mixed_precision: bool = False  # bf16 compute on CPU (float16 on GPU); weights stay float32
    # low-rank U-Nets: "on" (the zoo default: recompute the member convs in the backward
    # pass), "off" (store them: fastest, most memory), "per_sample" (recompute, one sample
    # at a time: least memory, slowest); the gradients are the same
    recompute: str = "on"
    # data="synthetic": cases generated on the fly by generator v2 (synthetic.SyntheticSource)
    synth_cases: int = 16  # fresh cases per epoch
    synth_val_cases: int = 4  # fixed held-out cases
    synth_downsample: int = 2  # 2: 2 mm voxels
    synth_brains: tuple = ("colin27", "mni152")
    synth_val_brains: tuple | None = None  # default: synth_brains; one brain can be held out

    def __post_init__(self):
        self.patch = tuple(int(p) for p in self.patch)
        if len(self.patch) != 3 or min(self.patch) <= 0:
            raise ValueError(f"patch must be three positive sizes, received patch={self.patch!r}")
        if not 0 <= self.val_fraction < 1:
            raise ValueError(f"val_fraction must be in [0, 1), received {self.val_fraction!r}")
        for name in ("val_every", "val_cases", "epochs", "batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < (0 if name.startswith("val") else 1):
                raise ValueError(f"{name} must be a {'non-negative' if name.startswith('val') else 'positive'} "
                                 f"integer, received {name}={value!r}")
        if self.recompute not in RECOMPUTE:
            raise ValueError(f"recompute must be one of {tuple(RECOMPUTE)}, received "
                             f"recompute={self.recompute!r}")
        if self.widths is not None:
            self.widths = tuple(int(w) for w in self.widths)
        self.synth_brains = tuple(self.synth_brains)
        if self.synth_val_brains is not None:
            self.synth_val_brains = tuple(self.synth_val_brains)


def build(cfg: SegConfig, channels, outputs, activation):
    options = {"width": cfg.width} | ({"widths": cfg.widths} if cfg.widths else {})
    if zoo.info(cfg.model)["family"] == "unet3d":
        options["recompute"] = RECOMPUTE[cfg.recompute]
    return zoo.load(cfg.model, input_shape=(*cfg.patch, channels), classes=outputs,
                    classifier_activation=activation, **options)
