"""kdnb.store: atomic checksummed files, memo by config, trained models computed once, and
TeacherCache lookups by sample index."""
import os
import pickle
import warnings

import pytest
import torch

from kdnb import cached, models, store, train
from kdnb.store import CorruptFileError
from kdnb.teachers import TeacherCache
from kdnb.methods import Distill
from kdnb.train import Batch

FIT = dict(epochs=2, batch_size=64, lr=3e-3, device="cpu", progress=False)


def sample():
    return {"w": torch.randn(3, 4), "ints": torch.arange(5), "nested": [1, 2.5, "x", {"b": torch.ones(2)}],
            "flag": True, "none": None}


def assert_same(a, b):
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            assert_same(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_same(x, y)
    else:
        assert a == b


def test_save_load_round_trip(tmp_path):
    obj = sample()
    path = store.save(obj, tmp_path / "deep" / "er" / "x.pt")  # parent folders are made
    assert_same(store.load(path), obj)


def test_save_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "x.pt"
    store.save({"v": torch.zeros(3)}, path)
    assert os.listdir(tmp_path) == ["x.pt"]  # no temp file left behind

    # A crash between writing and renaming leaves the old file intact and no temp file.
    def crash(src, dst):
        raise OSError("disk went away")

    monkeypatch.setattr(store.os, "replace", crash)
    with pytest.raises(OSError, match="disk went away"):
        store.save({"v": torch.ones(3)}, path)
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["x.pt"]
    assert torch.equal(store.load(path)["v"], torch.zeros(3))


def test_truncated_file_is_detected(tmp_path):
    path = store.save(sample(), tmp_path / "x.pt")
    blob = path.read_bytes()
    for cut in (1, 70, len(blob) // 2):
        path.write_bytes(blob[:-cut])
        with pytest.raises(CorruptFileError, match=str(path)):
            store.load(path)


def test_bit_flip_is_detected(tmp_path):
    path = store.save(sample(), tmp_path / "x.pt")
    blob = bytearray(path.read_bytes())
    for where in (10, len(blob) // 2, len(blob) - 100):
        flipped = blob.copy()
        flipped[where] ^= 0x01
        path.write_bytes(bytes(flipped))
        with pytest.raises(CorruptFileError, match=str(path)):
            store.load(path)


def test_foreign_files_are_refused(tmp_path):
    plain = tmp_path / "plain.pt"
    torch.save({"w": torch.zeros(2)}, plain)  # a valid torch file, but not one of ours
    with pytest.raises(CorruptFileError, match=str(plain)):
        store.load(plain)
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        store.load(tmp_path / "missing.pt")


class Payload:
    """Unpickling this runs code: it makes a folder. weights_only loading must refuse it."""

    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (os.mkdir, (self.target,))


def test_load_runs_no_code_from_the_file(tmp_path):
    target = tmp_path / "created-by-unpickling"
    path = store.save({"x": Payload(str(target))}, tmp_path / "evil.pt")  # a valid checksum
    with pytest.raises((CorruptFileError, pickle.UnpicklingError)):
        store.load(path)
    assert not target.exists()


def test_key_of_is_stable_and_order_free():
    a = store.key_of({"a": 1, "b": [1, 2], "c": {"x": 0.5}})
    assert a == store.key_of({"c": {"x": 0.5}, "b": [1, 2], "a": 1})
    assert a != store.key_of({"a": 2, "b": [1, 2], "c": {"x": 0.5}})
    assert len(a) == 16


def test_memo_computes_once_then_loads(fresh_cache):
    calls = []

    def compute():
        calls.append(1)
        return {"w": torch.randn(4)}

    config = {"name": "thing", "size": 4}
    first = store.memo("things", config, compute)
    second = store.memo("things", dict(reversed(list(config.items()))), compute)
    assert len(calls) == 1
    assert torch.equal(first["w"], second["w"])
    files = list((fresh_cache / "things").glob("*.pt"))
    assert len(files) == 1 and files[0].stem == store.key_of(config)

    other = store.memo("things", {"name": "thing", "size": 5}, compute)
    assert len(calls) == 2 and not torch.equal(other["w"], first["w"])
    assert len(list((fresh_cache / "things").glob("*.pt"))) == 2
    assert not list(fresh_cache.rglob("*.tmp"))


def test_memo_recomputes_a_corrupt_entry(fresh_cache):
    calls = []

    def compute():
        calls.append(1)
        return torch.full((3,), float(len(calls)))

    store.memo("things", {"k": 1}, compute)
    path = next((fresh_cache / "things").glob("*.pt"))
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.warns(UserWarning, match="recomputing cache entry"):
        value = store.memo("things", {"k": 1}, compute)
    assert len(calls) == 2 and torch.equal(value, torch.full((3,), 2.0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the repaired entry loads cleanly
        assert torch.equal(store.memo("things", {"k": 1}, compute), value)
    assert len(calls) == 2


def test_cache_dir_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("KDNB_CACHE", str(tmp_path / "c"))
    assert store.cache_dir() == tmp_path / "c"


@pytest.fixture
def count_fits(monkeypatch):
    calls = []
    real_fit = train.fit

    def counting_fit(*args, **kwargs):
        calls.append(1)
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(train, "fit", counting_fit)
    return calls


def test_trained_computes_once(digits, fresh_cache, count_fits):
    spec = {"name": "mlp", "hidden": [16]}
    m1, h1 = cached.trained(spec, digits, seed=0, **FIT)
    m2, h2 = cached.trained(spec, digits, seed=0, **FIT)
    assert len(count_fits) == 1  # the second call loaded from disk
    assert h1 == h2 and not m1.training and not m2.training
    assert all(torch.equal(v, m2.state_dict()[k]) for k, v in m1.state_dict().items())
    assert train.evaluate(m2, digits.x_val, digits.y_val) == h1["best_val_acc"]
    # Anything in the config makes another entry: seed, fit arguments, model, data.
    cached.trained(spec, digits, seed=1, **FIT)
    cached.trained(spec, digits, seed=0, **{**FIT, "lr": 1e-3})
    cached.trained({"name": "mlp", "hidden": [8]}, digits, seed=0, **FIT)
    cached.trained(spec, digits.subset(0.5), seed=0, **FIT)
    assert len(count_fits) == 5
    assert len(list((fresh_cache / "models").glob("*.pt"))) == 5


def test_trained_keys_on_the_teacher(digits, fresh_cache, count_fits):
    spec = {"name": "mlp", "hidden": [16]}
    teachers = [models.build(spec, digits.shape, 10, seed=s) for s in (1, 2)]
    for teacher in teachers:
        cached.trained(spec, digits, Distill(teacher, T=4.0, alpha=0.5), **FIT)
    assert len(count_fits) == 2  # two teachers, two students: never one entry for both
    cached.trained(spec, digits, Distill(teachers[0], T=4.0, alpha=0.5), **FIT)
    assert len(count_fits) == 2
    cached.trained(spec, digits, Distill(teachers[0], T=2.0, alpha=0.5), **FIT)
    assert len(count_fits) == 3


def test_teacher_cache_looks_up_by_index():
    logits = torch.arange(20 * 3, dtype=torch.float32).reshape(20, 3)
    tc = TeacherCache(logits)
    assert len(tc) == 20
    idx = torch.tensor([7, 2, 19, 0])
    batch = Batch(torch.zeros(4, 1), torch.zeros(4, dtype=torch.long), idx)
    assert torch.equal(tc(batch), logits[idx])


def test_teacher_cache_compute_matches_the_teacher(digits):
    teacher = models.mlp(digits.shape, hidden=(16,), dropout=0.5).train()
    tc = TeacherCache.compute(teacher, digits.x_train, batch_size=100)
    assert teacher.training  # the teacher's mode is restored
    teacher.eval()
    with torch.no_grad():
        assert torch.allclose(tc.logits, teacher(digits.x_train), atol=1e-6)
    assert not tc.logits.requires_grad


def test_teacher_cache_refuses_augmented_batches(digits):
    tc = TeacherCache(torch.zeros(len(digits.y_train), 10))
    batch = Batch(torch.zeros(2, 1, 8, 8), torch.zeros(2, dtype=torch.long), torch.tensor([0, 1]), augmented=True)
    with pytest.raises(ValueError, match="TeacherCache holds logits of un-augmented inputs"):
        tc(batch)
    student = models.mlp(digits.shape, hidden=(16,))
    with pytest.raises(ValueError, match="un-augmented"):
        train.fit(student, digits, Distill(tc), augment=True, **FIT)


def test_distill_checks_the_cache_against_the_data(digits):
    student = models.mlp(digits.shape, hidden=(16,))
    with pytest.raises(ValueError, match=f"teacher cache holds 10 rows but the training split has {len(digits.y_train)}"):
        train.fit(student, digits, Distill(TeacherCache(torch.zeros(10, 10))), **FIT)
    with pytest.raises(ValueError, match="teacher outputs 3 classes but data 'digits' has 10"):
        train.fit(student, digits, Distill(TeacherCache(torch.zeros(len(digits.y_train), 3))), **FIT)


def test_teacher_cache_targets_are_computed_once_per_T_and_alpha(monkeypatch):
    from kdnb import losses
    logits = torch.randn(20, 3, generator=torch.Generator().manual_seed(0))
    tc, made = TeacherCache(logits), []
    real = losses.hinton_targets
    monkeypatch.setattr(losses, "hinton_targets", lambda *a: made.append(a[1:]) or real(*a))
    idx = torch.tensor([7, 2, 19, 0])
    batch = Batch(torch.zeros(4, 1), torch.zeros(4, dtype=torch.long), idx)
    for _ in range(3):
        rows = tc.targets(batch, 4.0, 0.5)
    torch.testing.assert_close(rows, real(logits, 4.0, 0.5)[:, idx])  # the rows of the batch's own samples
    assert made == [(4.0, 0.5)]
    tc.targets(batch, 2.0, 0.5)
    tc.targets(batch, 2.0, 1.0)
    assert made == [(4.0, 0.5), (2.0, 0.5), (2.0, 1.0)]
    with pytest.raises(ValueError, match="un-augmented"):
        tc.targets(Batch(batch.x, batch.y, idx, augmented=True), 2.0, 1.0)


def test_distill_checks_a_live_teacher_on_its_first_batch(digits):
    student = models.mlp(digits.shape, hidden=(16,))
    wrong = models.mlp(digits.shape, hidden=(8,), classes=3)
    with pytest.raises(ValueError, match="teacher outputs 3 classes but data 'digits' has 10; distill from a teacher"):
        train.fit(student, digits, Distill(wrong), **FIT)


def test_tensor_hash_names_contents_dtype_and_shape():
    from kdnb.store import tensor_hash
    x = torch.arange(12, dtype=torch.float32)
    assert tensor_hash(x) == tensor_hash(x.clone()) == tensor_hash(x.view(3, 4).t().contiguous().t().reshape(-1))
    assert len({tensor_hash(x), tensor_hash(x.view(3, 4)), tensor_hash(x.double()), tensor_hash(x + 1e-6),
                tensor_hash(x, text="other"), tensor_hash(x.bfloat16()), tensor_hash(x[:6], x[6:])}) == 7


USER_METHOD = """
import torch.nn.functional as F
from kdnb.methods import Method
import myhelpers


class MyLoss(Method):
    def losses(self, logits, batch):
        return {"ce": F.cross_entropy(logits, batch.y, label_smoothing=0.1) * myhelpers.scale()}


def my_loss(logits, batch):
    return F.cross_entropy(logits, batch.y) * myhelpers.scale()
"""


@pytest.fixture
def user_modules(tmp_path, monkeypatch):
    """A user's own method module and a helper module it calls, in a folder on sys.path (not an
    installed package), and a function that edits one of them and re-imports both."""
    import importlib
    import sys
    (tmp_path / "mymethods.py").write_text(USER_METHOD)
    (tmp_path / "myhelpers.py").write_text("def scale():\n    return 1.0\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in ("mymethods", "myhelpers"):
        sys.modules.pop(name, None)

    def edit(name, old, new):
        path = tmp_path / f"{name}.py"
        path.write_text(path.read_text().replace(old, new))
        importlib.invalidate_caches()
        for mod in ("myhelpers", "mymethods"):
            sys.modules.pop(mod, None)
        return importlib.import_module("mymethods")

    yield importlib.import_module("mymethods"), edit
    for name in ("mymethods", "myhelpers"):
        sys.modules.pop(name, None)


def test_an_edited_user_method_or_its_helper_retrains(digits, fresh_cache, count_fits, user_modules):
    """A Method subclass in the user's own module is keyed by its source and that of the user
    modules it reaches: editing ``label_smoothing`` in it, or a helper it calls, recomputes; the
    unchanged code is served from the cache."""
    mymethods, edit = user_modules
    spec = {"name": "mlp", "hidden": [16]}
    _, first = cached.trained(spec, digits, mymethods.MyLoss(), **FIT)
    cached.trained(spec, digits, mymethods.MyLoss(), **FIT)
    assert len(count_fits) == 1
    mymethods = edit("mymethods", "label_smoothing=0.1", "label_smoothing=0.5")
    _, second = cached.trained(spec, digits, mymethods.MyLoss(), **FIT)
    assert len(count_fits) == 2 and second["loss"] != first["loss"]
    mymethods = edit("myhelpers", "return 1.0", "return 2.0")
    _, third = cached.trained(spec, digits, mymethods.MyLoss(), **FIT)
    assert len(count_fits) == 3 and third["loss"] != second["loss"]
    # a plain loss function of the user's module: keyed by the helper module it calls
    cached.trained(spec, digits, mymethods.my_loss, **FIT)
    mymethods = edit("myhelpers", "return 2.0", "return 3.0")
    cached.trained(spec, digits, mymethods.my_loss, **FIT)
    assert len(count_fits) == 5
