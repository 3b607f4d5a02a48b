"""Where models run: the one place that picks the device and what it implies (bf16 autocast and
channels-last on CUDA, nothing on the CPU), and on how many processes: under ``torchrun`` each
process is one rank (``$WORLD_SIZE``, ``$RANK``, ``$LOCAL_RANK``) with its own GPU, joined in one
process group (NCCL on CUDA, gloo on the CPU) by :func:`init`. Without torchrun there is one rank
and nothing here touches ``torch.distributed``."""
import atexit
import contextlib
import os
from dataclasses import dataclass
from datetime import timedelta

import torch


@dataclass(frozen=True)
class Ranks:
    """``size`` processes train together; this one is ``rank`` (``local_rank`` on its machine)."""
    size: int = 1
    rank: int = 0
    local_rank: int = 0

    @property
    def main(self):
        return self.rank == 0


class RendezvousError(ConnectionError):
    """The ranks could not meet: a rendezvous variable is missing, or the others never came."""


def env_int(name, low, high=None, default=None):
    text = os.environ.get(name)
    if text is None or text == "":
        if default is not None:
            return default
        raise RendezvousError(f"${name} is not set but $WORLD_SIZE={os.environ['WORLD_SIZE']} is: launch with "
                              f"`torchrun --nproc_per_node=N ...`, which sets both, or unset WORLD_SIZE")
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or value < low or (high is not None and value > high):
        allowed = f"an integer >= {low}" if high is None else f"an integer in [{low}, {high}]"
        raise ValueError(f"${name} must be {allowed}, got {text!r}")
    return value


def launched():
    """The ranks torchrun launched this process among (one rank without torchrun)."""
    if not os.environ.get("WORLD_SIZE"):
        return Ranks()
    size = env_int("WORLD_SIZE", 1)
    if size == 1:
        return Ranks()
    rank = env_int("RANK", 0, size - 1)
    return Ranks(size, rank, env_int("LOCAL_RANK", 0, size - 1, default=rank))


def ranks():
    """The ranks training together now: torchrun's (one rank without torchrun)."""
    return launched()


def is_main():
    """Whether this process is the one that writes files and shows progress (rank 0)."""
    return launched().main




def default_device():
    """``$KDNB_DEVICE`` when set, else CUDA when present (this rank's GPU, ``$LOCAL_RANK``, under
    torchrun), else the CPU."""
    name = os.environ.get("KDNB_DEVICE")
    if name:
        return torch.device(name)
    if not torch.cuda.is_available():
        return torch.device("cpu")
    here = launched()
    if here.size == 1:
        return torch.device("cuda")
    if here.local_rank >= torch.cuda.device_count():
        raise ValueError(f"$LOCAL_RANK={here.local_rank} but this machine has {torch.cuda.device_count()} GPU(s): "
                         f"--nproc_per_node must be at most {torch.cuda.device_count()}")
    return torch.device("cuda", here.local_rank)


def init(device=None):
    """Join torchrun's process group (once) and return this rank's device (``"cuda"`` without an
    index is its own GPU); errors name the missing variable, or the address the ranks failed to
    meet at. ``$KDNB_RENDEZVOUS_TIMEOUT`` (seconds, default 600) bounds the wait."""
    import torch.distributed as dist
    here = launched()
    device = device or default_device()
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", here.local_rank)
    if dist.is_initialized():
        if dist.get_world_size() != here.size:
            raise RendezvousError(f"the process group has {dist.get_world_size()} ranks but $WORLD_SIZE="
                                  f"{here.size}")
        return device
    missing = [v for v in ("MASTER_ADDR", "MASTER_PORT") if not os.environ.get(v)]
    if missing:
        raise RendezvousError(
            f"$WORLD_SIZE={here.size} makes this process rank {here.rank} of {here.size}, but {' and '.join(missing)} "
            f"(the rendezvous, where rank 0 listens) {'is' if len(missing) == 1 else 'are'} not set: launch with "
            f"`torchrun --nproc_per_node={here.size} ...` (several machines: --nnodes and --rdzv-endpoint), "
            f"or unset WORLD_SIZE to train in one process")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    timeout = float(os.environ.get("KDNB_RENDEZVOUS_TIMEOUT") or 600)
    where = f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}"
    try:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=here.rank,
                                world_size=here.size, timeout=timedelta(seconds=timeout))
    except (RuntimeError, ValueError, OSError) as err:  # torch's store and network errors
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise RendezvousError(
            f"rank {here.rank} of {here.size} could not meet the other ranks at {where} (MASTER_ADDR:MASTER_PORT) "
            f"within {timeout:g} s: {first}. Start every rank (torchrun --nproc_per_node=N; on several machines "
            f"the same --nnodes and --rdzv-endpoint on each), check the address is reachable, or raise "
            f"$KDNB_RENDEZVOUS_TIMEOUT") from None
    atexit.register(lambda: dist.is_initialized() and dist.destroy_process_group())
    return device


def broadcast_object(obj):
    """Rank 0's ``obj`` on every rank (pickled: records and state dicts, not big tensors)."""
    import torch.distributed as dist
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_objects(obj):
    """Every rank's ``obj``, in rank order, on every rank."""
    import torch.distributed as dist
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_tensors(tensors):
    """Rank 0's values of ``tensors`` (in place) on every rank."""
    import torch.distributed as dist
    for t in tensors:
        dist.broadcast(t.data, src=0)


def all_reduce_sum(t):
    """The sum over ranks of ``t``, in place (and returned)."""
    import torch.distributed as dist
    dist.all_reduce(t)
    return t


def average_gradients(params, size):
    """The mean over ranks of each parameter's gradient, in one all-reduce (a parameter without
    one on this rank counts as zero)."""
    params = [p for p in params if p.requires_grad]
    if not params:
        return
    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for p in params])
    all_reduce_sum(flat).div_(size)
    for p, g in zip(params, flat.split([p.numel() for p in params])):
        p.grad = g.view_as(p).to(p.dtype)


_sharing = []


def shared(compute):
    """``compute()`` run once, on rank 0, and its value sent to every rank: a teacher's outputs, a
    cache entry. Plainly ``compute()`` in one process."""
    here = ranks()
    if here.size == 1 or _sharing:  # nested in another shared(): rank 0 alone is running it
        return compute()
    init()
    value = None
    if here.main:
        _sharing.append(1)
        try:
            value = compute()
        finally:
            _sharing.pop()
    return broadcast_object(value)


def numerics(device=None):
    """What, besides the config, decides a run's last bits: on the CPU the thread count (a
    reduction split over 2 threads rounds differently from one over 1), elsewhere the device type.
    Part of every training cache key, so a result is never served to a run on other numerics."""
    device = torch.device(device) if device is not None else default_device()
    return {"cpu_threads": torch.get_num_threads()} if device.type == "cpu" else {"device": device.type}


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
