"""The book's models: MLPs, small 1-D/2-D convnets and a CIFAR ResNet-18.

Every model takes inputs shaped like the data set (``(C, L)`` or ``(C, H, W)``) and returns
logits. ``build(spec)`` makes a model from a plain dict, so a model is also a cache key.
"""
import inspect
import math

import torch
from torch import nn

from .checks import check_number, check_positive_int, check_shape  # noqa: F401


def mlp(in_shape, hidden=(128,), classes=10, dropout=0.0):
    """Flatten → [Linear → ReLU → Dropout] per hidden width → Linear."""
    in_shape = check_shape(in_shape)
    check_positive_int("classes", classes)
    check_number("dropout", dropout, low=0, high=1, high_open=True)
    layers, width = [nn.Flatten()], math.prod(in_shape)
    for h in hidden:
        check_positive_int("hidden width", h)
        layers += [nn.Linear(width, h), nn.ReLU()]
        if dropout:
            layers.append(nn.Dropout(dropout))
        width = h
    layers.append(nn.Linear(width, classes))
    return nn.Sequential(*layers)


def convnet(in_shape, depth=2, width=16, classes=10, dims=None, norm=False, hidden=64, dropout=0.0):
    """``depth`` conv blocks (conv 3 → [BN] → ReLU, halving the size every second block),
    global average pool, then a small MLP head. ``dims`` (1 or 2) defaults to the input's."""
    in_shape = check_shape(in_shape)
    check_positive_int("depth", depth)
    check_positive_int("width", width)
    check_positive_int("classes", classes)
    check_number("dropout", dropout, low=0, high=1, high_open=True)
    dims = dims or len(in_shape) - 1
    if dims not in (1, 2) or len(in_shape) != dims + 1:
        raise ValueError(f"dims must be 1 or 2 and match in_shape (C, L) or (C, H, W); "
                         f"got dims={dims!r}, in_shape={in_shape}")
    Conv, BN, Pool = ((nn.Conv1d, nn.BatchNorm1d, nn.MaxPool1d) if dims == 1
                      else (nn.Conv2d, nn.BatchNorm2d, nn.MaxPool2d))
    layers, c, size = [], in_shape[0], min(in_shape[1:])
    for i in range(depth):
        out = width * 2 ** (i // 2)
        layers += [Conv(c, out, 3, padding=1, bias=not norm)]
        layers += [BN(out)] if norm else []
        layers += [nn.ReLU()]
        if i % 2 == 1 and size >= 4:
            layers.append(Pool(2))
            size //= 2
        c = out
    pool = nn.AdaptiveAvgPool1d(1) if dims == 1 else nn.AdaptiveAvgPool2d(1)
    head = [nn.Flatten(), nn.Linear(c, hidden), nn.ReLU()]
    head += [nn.Dropout(dropout)] if dropout else []
    return nn.Sequential(*layers, pool, *head, nn.Linear(hidden, classes))


def cifar_resnet(name, in_shape, classes):
    """torchvision's ResNet ``name`` with the CIFAR stem: a 3×3 stride-1 first conv and no max-pool."""
    import torchvision
    in_shape = check_shape(in_shape)
    m = getattr(torchvision.models, name)(num_classes=check_positive_int("classes", classes))
    m.conv1 = nn.Conv2d(in_shape[0], 64, 3, stride=1, padding=1, bias=False)
    m.maxpool = nn.Identity()
    return m


def resnet18_cifar(in_shape=(3, 32, 32), classes=10):
    """torchvision's ResNet-18 with the CIFAR stem."""
    return cifar_resnet("resnet18", in_shape, classes)


def resnet50_cifar(in_shape=(3, 32, 32), classes=10):
    """torchvision's ResNet-50 with the CIFAR stem (seed 002's teacher; chapter 7)."""
    return cifar_resnet("resnet50", in_shape, classes)


def conv_mlp(in_shape, filters=32, hidden=(128,), classes=10, dropout=0.0):
    """One 3×3 conv (no padding) → ReLU → 2×2 max-pool, then an MLP: seed 001's MNIST pair.
    ``hidden=(128,)`` is its student (693,962 parameters), ``(256, 128, 32)`` its teacher (1,422,378)."""
    in_shape = check_shape(in_shape)
    check_positive_int("filters", filters)
    if len(in_shape) != 3 or min(in_shape[1:]) < 4:
        raise ValueError(f"in_shape must be (C, H, W) with H, W >= 4 for conv_mlp, got {in_shape}")
    flat = filters * ((in_shape[1] - 2) // 2) * ((in_shape[2] - 2) // 2)
    head = mlp((flat,), hidden, classes, dropout)
    return nn.Sequential(nn.Conv2d(in_shape[0], filters, 3), nn.ReLU(), nn.MaxPool2d(2), *head)


def cifar_cnn(in_shape=(3, 32, 32), widths=(32, 32, 64, 64, 128, 128), hidden=256, classes=10, dropout=0.0):
    """Seed 001's CIFAR-10 student: 3×3 convs (padded) → batch norm → ReLU, a 2×2 max-pool after
    every second one, then two fully connected layers. The report gives "6 conv (BN) + 2 FC" and
    816,938 parameters but not the widths; the defaults give 815,018 (0.2 % fewer)."""
    in_shape = check_shape(in_shape)
    check_positive_int("hidden", hidden)
    check_positive_int("classes", classes)
    check_number("dropout", dropout, low=0, high=1, high_open=True)
    if len(in_shape) != 3 or not widths or len(in_shape) == 3 and min(in_shape[1:]) < 2 ** (len(widths) // 2):
        raise ValueError(f"in_shape must be (C, H, W) with H, W >= {2 ** (len(widths) // 2)} for {len(widths)} "
                         f"convs, got {in_shape}")
    layers, c, h, w = [], in_shape[0], in_shape[1], in_shape[2]
    for i, out in enumerate(widths):
        check_positive_int("conv width", out)
        layers += [nn.Conv2d(c, out, 3, padding=1), nn.BatchNorm2d(out), nn.ReLU()]
        if i % 2 == 1:
            layers.append(nn.MaxPool2d(2))
            h, w = h // 2, w // 2
        c = out
    head = [nn.Flatten(), nn.Linear(c * h * w, hidden), nn.ReLU()] + ([nn.Dropout(dropout)] if dropout else [])
    return nn.Sequential(*layers, *head, nn.Linear(hidden, classes))


BUILDERS = {"mlp": mlp, "convnet": convnet, "conv_mlp": conv_mlp, "resnet18_cifar": resnet18_cifar,
            "resnet50_cifar": resnet50_cifar,
            "cifar_cnn": cifar_cnn}


def build(spec, in_shape, classes, seed=None):
    """Make a model from ``{"name": ..., **kwargs}``; with ``seed`` its initial weights are fixed."""
    if not isinstance(spec, dict) or spec.get("name") not in BUILDERS:
        raise ValueError(f"model spec must be a dict with name one of {', '.join(BUILDERS)}; got {spec!r}")
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in spec.items() if k != "name"}
    allowed = [p for p in inspect.signature(BUILDERS[spec["name"]]).parameters if p not in ("in_shape", "classes")]
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise ValueError(f"model spec key {unknown[0]!r} is not an argument of {spec['name']}; "
                         f"allowed: {', '.join(sorted(allowed))}")
    if seed is not None:
        torch.manual_seed(seed)
    return BUILDERS[spec["name"]](in_shape=in_shape, classes=classes, **kwargs)


def count_params(model):
    """Trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def size_bytes(model):
    """Bytes of parameters and buffers, as they would be saved."""
    return sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))
