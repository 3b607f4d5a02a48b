"""Run profiles. ``quick`` (the default) runs every chapter on this laptop-class CPU in about
90 s on the embedded data; ``full`` runs the seeds' data sets at their scale and wants a GPU.
Chosen by ``$KDNB_PROFILE``. The profiles themselves are :data:`kdnb.book.settings.PROFILES`."""
import math
import os
from dataclasses import replace

from .settings import PROFILES, Profile, smoke, smoke_mode  # noqa: F401  (Profile: the record)


def epochs_for(n_train, steps, batch_size):
    """Whole epochs over ``n_train`` samples in batches of ``batch_size`` closest to ``steps``
    steps (at least one): how students on training sets of different sizes are step-matched."""
    return max(1, round(steps / math.ceil(n_train / batch_size)))


def env_count(name, default, low):
    """The integer in ``$name`` (``default`` when unset or empty); anything else is refused."""
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or value < low:
        raise ValueError(f"${name} must be an integer >= {low}, got {text!r}")
    return value


def get(name=None):
    """The profile ``name``, else ``$KDNB_PROFILE``, else ``quick``; a Profile is returned as is.
    ``$KDNB_THREADS`` sets its CPU thread count and ``$KDNB_SEED_OFFSET`` shifts its seeds.
    ``$KDNB_SMOKE=1`` keeps the profile's models and data but trains one epoch of everything: what
    the tests use to run every chapter's full-profile code path on tiny files without a GPU."""
    if isinstance(name, Profile):
        return name
    name = name or os.environ.get("KDNB_PROFILE") or "quick"
    if name not in PROFILES:
        raise ValueError(f"profile must be one of {', '.join(PROFILES)} (from KDNB_PROFILE or the "
                         f"argument), got {name!r}")
    p = PROFILES[name]
    threads = env_count("KDNB_THREADS", p.threads, low=1)
    offset = env_count("KDNB_SEED_OFFSET", 0, low=0)
    p = replace(p, threads=threads, seed_offset=offset, seeds=tuple(offset + s for s in p.seeds))
    return smoke(p) if smoke_mode() else p
