"""A content-addressed store on disk: values saved under the hash of the config that made them,
computed once and loaded after. It knows nothing of distillation.

Files are written atomically (temp file, fsync, rename) with a SHA-256 footer, and read with
``torch.load(weights_only=True)``: a truncated or bit-flipped file is detected and named, and a
pickle from elsewhere can't run code.
"""
import contextlib
import fcntl
import hashlib
import inspect
import io
import json
import os
import pickle
import tempfile
from pathlib import Path

import torch

MAGIC = b"\nKDNB-SHA256:"
FOOTER = len(MAGIC) + 64


class CorruptFileError(ValueError):
    """A stored file whose checksum does not match: truncated, bit-flipped or not ours."""


def cache_dir():
    """``$KDNB_CACHE`` when set, else ``~/.cache/kdnb``."""
    return Path(os.environ.get("KDNB_CACHE") or Path.home() / ".cache" / "kdnb")


def save(obj, path):
    """torch.save ``obj`` to ``path`` atomically, with a checksum footer."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    payload = buf.getvalue()
    digest = hashlib.sha256(payload).hexdigest().encode()
    return write_atomic(path, payload + MAGIC + digest)


def write_atomic(path, payload):
    """Write ``payload`` (bytes) to ``path`` so that a kill at any moment leaves the old file or
    the new one, never a broken one: a temporary file beside it, fsynced, then renamed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    dirfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dirfd)
    finally:
        os.close(dirfd)
    return path


def write_json(path, obj, **kwargs):
    """``obj`` as JSON in ``path``, atomically (:func:`write_atomic`)."""
    return write_atomic(path, json.dumps(obj, ensure_ascii=False, **kwargs).encode())


def read_json(path, what="a JSON file"):
    """The JSON in ``path``; an empty or garbled file is refused with an error naming the file and
    what it should hold (never a bare ``Expecting value``)."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"file {str(path)!r} should hold {what} but is empty or not valid JSON ({err}); "
                         f"it was probably cut short by a crash: delete it or restore it") from None


def load(path, map_location="cpu"):
    """Read a file written by :func:`save`; raise :class:`CorruptFileError` naming the path when
    its checksum fails, and refuse anything but tensors and plain containers."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"path {str(path)!r} does not exist or is not a file; pass a file written by "
                                f"kdnb.store.save")
    blob = path.read_bytes()
    payload, magic, digest = blob[:-FOOTER], blob[-FOOTER:-64], blob[-64:]
    if magic != MAGIC or hashlib.sha256(payload).hexdigest().encode() != digest:
        raise CorruptFileError(f"{path}: checksum mismatch (truncated, corrupted or not written by kdnb)")
    try:
        return torch.load(io.BytesIO(payload), map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:  # a checksummed file may still come from elsewhere
        raise CorruptFileError(f"{path}: refused, it holds objects other than tensors and plain containers "
                               f"({str(err).splitlines()[0]})") from None


@contextlib.contextmanager
def locked(path):
    """An exclusive lock beside ``path`` so two processes don't compute the same entry at once."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(str(path) + ".lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def key_of(config):
    """A stable short hash of a JSON-able config."""
    text = json.dumps(config, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def tensor_hash(*tensors, text=""):
    """A short hash of tensors' dtypes, shapes and bytes (any dtype, any device), and ``text``:
    the one way cache keys name data, teacher outputs and weights."""
    h = hashlib.sha256(text.encode())
    for t in tensors:
        t = t.detach()
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.cpu().contiguous().flatten().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def source_hash(*objects):
    """Hash of the source code of functions/classes/modules: a cache key part that changes
    when the code that builds a model changes."""
    return hashlib.sha256("".join(inspect.getsource(o) for o in objects).encode()).hexdigest()[:12]


def memo(kind, config, compute):
    """Return the stored value for ``config`` or compute, store and return it.

    A corrupt entry is reported and recomputed. Concurrent callers wait on a lock, so the
    entry is computed once.
    """
    path = cache_dir() / kind / f"{key_of(config)}.pt"
    with locked(path):
        if path.exists():
            try:
                stored = load(path)
                if not (isinstance(stored, dict) and "config" in stored and "value" in stored):
                    raise CorruptFileError(f"cache entry {str(path)!r} is a kdnb file but not a cache entry (no "
                                           f"config and value)")
                if stored["config"] == json.loads(json.dumps(config, sort_keys=True, default=str)):
                    return stored["value"]
            except CorruptFileError as err:
                import warnings
                warnings.warn(f"recomputing cache entry: {err}")
        value = compute()
        save({"config": json.loads(json.dumps(config, sort_keys=True, default=str)), "value": value}, path)
        return value


def entries(root=None):
    """``(path, bytes, config)`` of every stored value; the config is None for an unreadable entry."""
    root = Path(root) if root else cache_dir()
    out = []
    for path in sorted(root.rglob("*.pt")) if root.exists() else []:
        try:
            config = load(path).get("config")
        except (CorruptFileError, FileNotFoundError, RuntimeError, AttributeError):
            config = None
        out.append((path, path.stat().st_size, config))
    return out


def remove(paths):
    """Delete stored entries (and their lock files); returns the bytes freed."""
    freed = 0
    for path in paths:
        path = Path(path)
        with contextlib.suppress(FileNotFoundError):
            freed += path.stat().st_size
            path.unlink()
        with contextlib.suppress(FileNotFoundError):
            Path(str(path) + ".lock").unlink()
    return freed
