"""Augmentation as part of the data path: random views of training inputs, and a seeded bank of
views that a teacher labels once, so that it answers on the very view the student sees.

``SignalViews`` makes MNIST-1D views (a circular shift, an amplitude scale, Gaussian noise);
``ImageViews`` makes image views with torchvision's transforms (padded random crop, flip). Both are
``callable(x, generator) -> views`` (what ``kdnb.train.fit``'s ``augment`` takes) and describe
themselves by their settings (``describe()``), so a cache key covers the augmentation.

:func:`view_bank` draws ``views`` views of every training sample from one seed. The bank is a
:class:`kdnb.data.Data` whose training split is the views, row ``v · n + i`` holding view ``v`` of
sample ``i`` (view 0 is the sample itself), with its label: every loop, cache and stacked grid of
kdnb trains on it unchanged, a teacher's outputs on it are keyed by (sample, view), and one seed
gives the same views to a grid member and to ``fit``. Validation and test are untouched.
"""
import math
from dataclasses import dataclass, replace

import torch

from .checks import check_number, check_positive_int
from .data import Data, one_thread


@dataclass(frozen=True)
class SignalViews:
    """Random views of 1-D signals ``(n, channels, length)``: a circular shift of up to ``shift``
    samples either way, an amplitude scale drawn from ``scale``, and Gaussian noise of standard
    deviation ``noise`` (in the data's standardised units)."""
    shift: int = 6
    scale: tuple = (0.8, 1.2)
    noise: float = 0.1

    def __post_init__(self):
        if isinstance(self.shift, bool) or not isinstance(self.shift, int) or self.shift < 0:
            raise ValueError(f"shift must be a non-negative integer (samples), got {self.shift!r}")
        if not (isinstance(self.scale, (tuple, list)) and len(self.scale) == 2):
            raise ValueError(f"scale must be a (low, high) pair of positive numbers, got {self.scale!r}")
        low = check_number("scale[0]", self.scale[0], low=0, low_open=True)
        check_number("scale[1]", self.scale[1], low=low)
        object.__setattr__(self, "scale", tuple(float(s) for s in self.scale))
        check_number("noise", self.noise, low=0)

    def __call__(self, x, g):
        if x.dim() != 3:
            raise ValueError(f"SignalViews takes signals of shape (n, channels, length), got {tuple(x.shape)}")
        n, _, length = x.shape
        shifts = torch.randint(-self.shift, self.shift + 1, (n,), generator=g)
        scales = torch.empty(n).uniform_(*self.scale, generator=g)
        noise = torch.randn(x.shape, generator=g) * self.noise
        cols = (torch.arange(length)[None, :] - shifts[:, None]) % length  # circular: out[t] = x[t − shift]
        out = x.gather(2, cols[:, None, :].expand(-1, x.shape[1], -1).to(x.device))
        return out * scales.to(x)[:, None, None] + noise.to(x)

    def describe(self):
        return {"views": "signal", "shift": self.shift, "scale": list(self.scale), "noise": self.noise}


@dataclass(frozen=True)
class ImageViews:
    """Random views of images ``(n, C, H, W)`` with torchvision's transforms: a random crop of
    the image zero-padded by ``pad``, and a horizontal flip when ``flip``. Each image draws its
    own crop and flip from the generator (torchvision's transforms draw from the global RNG, which
    is seeded from ``g`` per call)."""
    pad: int = 4
    flip: bool = True

    def __post_init__(self):
        check_positive_int("pad", self.pad) if self.pad else None
        if not isinstance(self.flip, bool):
            raise ValueError(f"flip must be True or False, got {self.flip!r}")

    def __call__(self, x, g):
        from torchvision.transforms import v2
        if x.dim() != 4:
            raise ValueError(f"ImageViews takes images of shape (n, C, H, W), got {tuple(x.shape)}")
        steps = [v2.RandomCrop(tuple(x.shape[-2:]), padding=self.pad)] + ([v2.RandomHorizontalFlip()] if self.flip else [])
        transform = v2.Compose(steps)
        seed = int(torch.randint(0, 2 ** 62, (1,), generator=g))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return torch.stack([transform(image) for image in x])

    def describe(self):
        return {"views": "image", "pad": self.pad, "flip": self.flip}


def default_views(data):
    """The augmentation a data set takes: signal views for MNIST-1D, crop and flip for images."""
    if len(data.shape) == 2:
        return SignalViews()
    if len(data.shape) == 3:  # a mirrored digit is another symbol: only natural images flip
        return ImageViews(flip=data.name == "cifar10")
    raise ValueError(f"no default views for data {data.name!r} of input shape {data.shape}")


@dataclass
class Bank:
    """A bank of views (:func:`view_bank`): ``data`` trains on the views; ``samples`` and ``views``
    say which sample and which view each of its training rows is."""
    data: Data
    samples: torch.Tensor
    views: torch.Tensor
    n: int
    augment: object
    seed: int

    def rows(self, views):
        """Training rows of the first ``views`` views of every sample (view 0: the samples themselves)."""
        check_positive_int("views", views)
        if views > self.count:
            raise ValueError(f"views must be at most the bank's {self.count}, got {views}")
        return torch.arange(views * self.n)

    @property
    def count(self):
        return len(self.samples) // self.n

    def steps_for(self, steps, batch_size):
        """The whole passes over the bank (epochs of its ``data``) closest to ``steps`` steps, in
        steps (at least one pass): a budget every arm on the bank can be matched to."""
        check_positive_int("steps", steps)
        per_pass = math.ceil(len(self.samples) / check_positive_int("batch_size", batch_size))
        return max(1, round(steps / per_pass)) * per_pass

    def describe(self):
        return {"augment": self.augment.describe(), "views": self.count, "seed": self.seed}


def view_bank(data, augment=None, views=32, seed=0):
    """``views`` views of every training sample of ``data`` drawn from ``seed`` (view 0 is the
    sample itself), as a :class:`Bank` whose ``data`` trains on all of them, view-major. Made on one
    thread, so the bank is the same bits on any machine."""
    if not isinstance(data, Data):
        raise TypeError(f"data must be a kdnb.data.Data record, got {type(data).__name__}")
    augment = default_views(data) if augment is None else augment
    if not (callable(augment) and hasattr(augment, "describe")):
        raise TypeError(f"augment must be a kdnb.augment view maker (SignalViews, ImageViews) or another callable "
                        f"(x, generator) -> views with a describe() method, got {type(augment).__name__}")
    views = check_positive_int("views", views)
    if views < 2:
        raise ValueError(f"views must be at least 2 (view 0 is the sample itself), got {views}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    g = torch.Generator().manual_seed(seed)
    x, y, n = data.x_train, data.y_train, len(data.y_train)
    with one_thread():
        made = [x] + [augment(x, g) for _ in range(views - 1)]
    bank = replace(data, x_train=torch.cat(made), y_train=y.repeat(views))
    samples = torch.arange(n).repeat(views)
    return Bank(bank, samples, torch.arange(views).repeat_interleave(n), n, augment, seed)


