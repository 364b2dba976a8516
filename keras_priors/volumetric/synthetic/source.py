"""Training cases generated on the fly: generator version 2 as a patch source, so training
draws fresh randomised cases every epoch without writing any file.

A `SyntheticSource` looks to the patch pipeline like a prepared dataset (`case_ids`,
`images`, `targets`, `foreground_samples`, `spacing`, BraTS 2021 regions WT / TC / ET). Its
case k of epoch e is `v2.make_case(brain, v2.case_rng(seed, k, e))`, cropped to the brain
and z-scored like a prepared case, so an epoch's patches depend only on (seed, epoch) and a
resumed run draws exactly what an uninterrupted one would. The held-out view
(`epoch=None`) is a fixed set of cases from a different random stream.

>>> train = SyntheticSource(cases=16, seed=0)                 # fresh cases every epoch
>>> val = SyntheticSource(cases=4, seed=0, epoch=None)        # fixed held-out cases
>>> train.for_epoch(3).images(train.case_ids[0]).shape[-1]   # doctest: +SKIP
4
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import numpy as np

from ..layouts import MODALITIES, REGIONS, to_regions
from . import v2
from .anatomy import ANATOMIES, _positive_int, load_anatomy


class SyntheticSource:
    """`cases` generated cases per epoch on the real brains `anatomies` (case k on brain
    k mod len(anatomies)) at `downsample` (2: 2 mm), from the v2 `ranges`. Generated cases
    are kept in a shared cache of `cache` cases (default: one epoch's)."""

    layout = "brats2021"
    modalities = MODALITIES["brats2021"]
    regions = dict(REGIONS["brats2021"])
    channels = 4
    outputs = 3

    def __init__(self, cases=16, seed=0, downsample=2, anatomies=ANATOMIES, ranges="train",
                 epoch=0, cache=None, _shared=None):
        self.cases = _positive_int(cases, "cases")
        self.seed = _positive_int(seed, "seed", minimum=0)
        self.downsample = _positive_int(downsample, "downsample")
        self.anatomies = tuple(anatomies)
        if not self.anatomies or any(a not in ANATOMIES for a in self.anatomies):
            raise ValueError(f"anatomies must be a non-empty selection of {ANATOMIES}, "
                             f"received {anatomies!r}")
        self.ranges = v2.check_ranges(ranges)
        self.epoch = epoch
        self.case_ids = [f"synthetic_{k:05d}" for k in range(self.cases)]
        self._shared = _shared or {"cache": OrderedDict(), "lock": threading.Lock(),
                                   "locks": {}, "size": cache or self.cases}

    def for_epoch(self, epoch):
        """The cases of `epoch` (the held-out view stays fixed)."""
        if self.epoch is None:
            return self
        return SyntheticSource(self.cases, self.seed, self.downsample, self.anatomies,
                               self.ranges, int(epoch), _shared=self._shared)

    def describe(self):
        return (f"synthetic generator v{v2.VERSION}, ranges {self.ranges.name}, "
                f"{'held-out' if self.epoch is None else 'per-epoch'} cases x{self.cases}, "
                f"seed {self.seed}, brains {', '.join(self.anatomies)}, downsample "
                f"{self.downsample}")

    def __len__(self):
        return self.cases

    def _index(self, case_id):
        if case_id not in self.case_ids:
            raise KeyError(f"case {case_id!r} is not one of this source's {self.cases} cases")
        return self.case_ids.index(case_id)

    def anatomy(self, case_id):
        return load_anatomy(self.anatomies[self._index(case_id) % len(self.anatomies)],
                            self.downsample)

    def spacing(self, case_id):
        affine = self.anatomy(case_id).affine
        return tuple(float(z) for z in np.sqrt((affine[:3, :3] ** 2).sum(0)))

    def _case(self, case_id):
        """(images, targets, foreground samples) of a case, generated once and cached."""
        key = (self.epoch, case_id)
        shared = self._shared
        with shared["lock"]:
            if key in shared["cache"]:
                shared["cache"].move_to_end(key)
                return shared["cache"][key]
            lock = shared["locks"].setdefault(key, threading.Lock())
        with lock:  # one thread generates a case; the others wait for it
            with shared["lock"]:
                if key in shared["cache"]:
                    return shared["cache"][key]
            value = self._generate(case_id)
            with shared["lock"]:
                shared["cache"][key] = value
                while len(shared["cache"]) > shared["size"]:
                    shared["cache"].popitem(last=False)
                shared["locks"].pop(key, None)
        return value

    def _generate(self, case_id):
        from ..pipeline import zscore
        from ..prepare import _bounding_box

        k = self._index(case_id)
        rng = v2.case_rng(self.seed, k, self.epoch)  # held-out (epoch None): another stream
        volumes, labels = v2.make_case(self.anatomy(case_id), rng, self.ranges)
        images = np.stack([volumes[m] for m in self.modalities], -1)
        box = _bounding_box(np.any(images != 0, -1) | (labels > 0))
        index = tuple(slice(a, b) for a, b in box)
        x = zscore(images[index])
        y = to_regions(labels[index], self.regions)
        fg = [np.argwhere(y[..., r] > 0).astype(np.int32) for r in range(y.shape[-1])]
        return x, y, fg

    def images(self, case_id):
        return self._case(case_id)[0]

    def targets(self, case_id):
        return self._case(case_id)[1]

    def foreground_samples(self, case_id):
        return self._case(case_id)[2]
