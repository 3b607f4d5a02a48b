"""Where models run: the one place that picks the device and what it implies (bf16 autocast and
channels-last on CUDA, nothing on the CPU)."""
import contextlib
import os

import torch


def default_device():
    """``$KDNB_DEVICE`` when set, else CUDA when present, else the CPU."""
    name = os.environ.get("KDNB_DEVICE")
    if name:
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def autocast(device):
    # bf16 on CUDA: same range as fp32, so no loss scaling is needed. Elsewhere no context at all:
    # entering a disabled torch.autocast still costs ~10 µs, a tenth of a small model's step overhead.
    if device.type != "cuda":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def prepare(model, device, sample):
    model.to(device)
    if device.type == "cuda" and sample.dim() == 4:
        model.to(memory_format=torch.channels_last)
    return model


def fits_on(device, *tensors):
    """Whether the tensors fit on ``device`` with room to train (the CPU always)."""
    if device.type != "cuda":
        return True
    free, _ = torch.cuda.mem_get_info(device)
    return sum(t.numel() * t.element_size() for t in tensors) < 0.4 * free
