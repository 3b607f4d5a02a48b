"""The method protocol: named loss terms, extra players with their own optimisers, which student
parameters train, feature taps; and cache descriptions that fail closed."""
import types

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kdnb import cached, keys, models, store, train
from kdnb.book import cli
from kdnb.methods import GANKD, CrossEntropy, Distill, Hint, Method, TeacherLabels, Uncacheable, VirtualTeacher, \
    describe
from kdnb.teachers import FrozenTeacher, TeacherCache, taps

FAST = dict(epochs=2, batch_size=64, lr=3e-3, device="cpu", progress=False)


@pytest.fixture(scope="module")
def data(digits):
    return digits.subset(0.5)


def mlp(data, seed=0, hidden=(32,)):
    return models.build({"name": "mlp", "hidden": list(hidden)}, data.shape, data.classes, seed=seed)


def convnet(data, seed=0, width=8):
    return models.build({"name": "convnet", "depth": 4, "width": width, "hidden": 16}, data.shape, data.classes,
                        seed=seed)


# ---------------------------------------------------------------------------------------------
# Named terms, players, trainable parameters, features.

def test_every_named_term_is_logged_per_epoch(data):
    h = train.fit(mlp(data), data, Distill(mlp(data, seed=1), T=2.0, alpha=0.5), **FAST)
    assert list(h["terms"]) == ["kd"] and len(h["terms"]["kd"]) == 2 and h["terms"]["kd"] == h["loss"]
    h = train.fit(mlp(data), data, GANKD(mlp(data, seed=1), classes=data.classes), **FAST)
    assert set(h["terms"]) == {"ce", "adv", "D/bce", "D/acc"}
    assert all(len(v) == 2 for v in h["terms"].values())
    # The student's loss is the sum of its own terms; the player's are logged beside, not added.
    for e in range(2):
        assert h["loss"][e] == pytest.approx(h["terms"]["ce"][e] + h["terms"]["adv"][e], rel=1e-5)
    assert 0 <= min(h["terms"]["D/acc"]) <= max(h["terms"]["D/acc"]) <= 1


class InertD(GANKD):
    """GAN KD whose discriminator's own loss has zero gradient: D may only move if some other
    loss (the student's) leaks into its update."""

    def player_losses(self, name, batch, logits):
        terms = super().player_losses(name, batch, logits)
        return {"bce": 0 * terms["bce"], "acc": terms["acc"]}


def test_a_player_never_descends_the_students_loss(data):
    method = InertD(mlp(data, seed=1), classes=data.classes, alpha=5.0)
    before = {k: v.clone() for k, v in method.D.state_dict().items()}
    student = mlp(data)
    start = {k: v.clone() for k, v in student.state_dict().items()}
    train.fit(student, data, method, **FAST)
    assert all(torch.equal(before[k], v) for k, v in method.D.state_dict().items())
    assert not all(torch.equal(start[k], v) for k, v in student.state_dict().items())  # the student did train
    # And a discriminator that does learn changes: the test above can fail.
    learning = GANKD(mlp(data, seed=1), classes=data.classes)
    first = {k: v.clone() for k, v in learning.D.state_dict().items()}
    train.fit(mlp(data), data, learning, **FAST)
    assert not all(torch.equal(first[k], v) for k, v in learning.D.state_dict().items())


def test_the_student_never_descends_the_players_loss(data):
    """The student's update is the same whatever the discriminator's own loss is."""
    class LoudD(GANKD):
        def player_losses(self, name, batch, logits):
            terms = super().player_losses(name, batch, logits)
            return {"bce": 0 * terms["bce"] + 1e3 * self.D(logits).pow(2).mean(), "acc": terms["acc"]}
    quiet, loud = mlp(data), mlp(data)
    teacher = mlp(data, seed=1)
    # One step each (one batch): D moves only after the student's step, so the students must agree.
    one = {**FAST, "epochs": 1, "batch_size": len(data.y_train)}
    train.fit(quiet, data, GANKD(teacher, classes=data.classes), **one)
    train.fit(loud, data, LoudD(teacher, classes=data.classes), **one)
    assert all(torch.equal(a, b) for a, b in zip(quiet.state_dict().values(), loud.state_dict().values()))


def test_a_players_optimiser_state_is_checkpointed_and_resumes_bit_exact(data, tmp_path):
    class Killed(Exception):
        pass

    class Dies(GANKD):
        def start_epoch(self, epoch, epochs):
            if epoch == 2 and getattr(self, "_dies", False):
                raise Killed

    kw = {**FAST, "epochs": 4}
    teacher = mlp(data, seed=1)
    whole_student, whole = mlp(data), Dies(teacher, classes=data.classes)
    h_whole = train.fit(whole_student, data, whole, **kw)
    path = tmp_path / "gan.ckpt"
    dying = Dies(teacher, classes=data.classes)
    dying._dies = True
    with pytest.raises(Killed):
        train.fit(mlp(data), data, dying, checkpoint=path, **kw)
    assert store.load(path)["players"]["D"]["state"]  # Adam's moments are in the checkpoint
    student, resumed = mlp(data), Dies(teacher, classes=data.classes)
    h = train.fit(student, data, resumed, checkpoint=path, **kw)
    assert all(torch.equal(a, b) for a, b in zip(student.state_dict().values(), whole_student.state_dict().values()))
    assert all(torch.equal(a, b) for a, b in zip(resumed.state_dict().values(), whole.state_dict().values()))
    assert h["terms"] == h_whole["terms"]


def test_the_nan_guard_names_the_player(data):
    class NaND(GANKD):
        def player_losses(self, name, batch, logits):
            terms = super().player_losses(name, batch, logits)
            return {**terms, "bce": terms["bce"] * float("nan")}
    with pytest.raises(train.NonFiniteLoss, match=r"player 'D'.s term 'bce'"):
        train.fit(mlp(data), data, NaND(mlp(data, seed=1), classes=data.classes), **FAST)

    class NaNStudent(GANKD):
        def losses(self, logits, batch):
            return {**super().losses(logits, batch), "adv": logits.sum() * float("nan")}
    with pytest.raises(train.NonFiniteLoss, match=r"the student's term 'adv'"):
        train.fit(mlp(data), data, NaNStudent(mlp(data, seed=1), classes=data.classes), **FAST)


def test_taps_read_named_graph_nodes_and_share_the_weights(data):
    model = convnet(data)
    tapped = taps(model, ["2", "5"])
    out = tapped(data.x_val[:4])
    assert set(out) == {"2", "5", "logits"}
    torch.testing.assert_close(out["logits"], model(data.x_val[:4]))
    assert {id(p) for p in tapped.parameters()} <= {id(p) for p in model.parameters()}  # no copy
    with pytest.raises(ValueError, match=r"nodes \['nope'\] are not graph nodes of Sequential; allowed: .*\b5\b"):
        taps(model, ["nope"])


def test_fitnets_stage_1_trains_only_the_guided_layers_and_the_regressor(data):
    teacher, student = convnet(data, seed=1, width=16), convnet(data)
    start = {k: v.clone() for k, v in student.state_dict().items()}
    method = Hint(teacher, hint="2", guided="2", stage=1)  # conv 0 → relu 1 → conv 2 (guided)
    h = train.fit(student, data, method, **{**FAST, "epochs": 4})
    changed = {k for k, v in student.state_dict().items() if not torch.equal(start[k], v)}
    assert changed == {"0.weight", "0.bias", "2.weight", "2.bias"}, changed
    assert isinstance(method.regressor, nn.Conv2d) and method.regressor.out_channels == 16  # 8 → 16 channels
    assert list(h["terms"]) == ["hint"] and h["terms"]["hint"][-1] < h["terms"]["hint"][0]  # the hint falls
    # Stage 2 from stage 1's weights, cached: it trains every layer.
    stage2, _ = cached.trained({"name": "convnet", "depth": 4, "width": 8, "hidden": 16}, data,
                              Distill(teacher, T=4.0, alpha=0.9), init=student, **FAST)
    assert all(not torch.equal(student.state_dict()[k], v.cpu()) for k, v in stage2.state_dict().items())
    # One stage, hint + KD: the whole student trains and both terms are logged.
    one = Hint(teacher, hint="2", guided="2", stage=None, kd=Distill(teacher, T=4.0, alpha=0.9), weight=0.5)
    h = train.fit(convnet(data), data, one, **FAST)
    assert set(h["terms"]) == {"hint", "kd"}
    with pytest.raises(ValueError, match=r"^kd must be None in stage 1"):
        Hint(teacher, hint="5", guided="2", stage=1, kd=Distill(teacher))


def test_teacher_labels_and_virtual_teacher_are_methods(data):
    teacher = mlp(data, seed=1)
    train.fit(teacher, data, **FAST)
    logits = train.predict(teacher, data.x_train)
    h = train.fit(mlp(data), data, TeacherLabels(TeacherCache(logits)), **FAST)
    assert list(h["terms"]) == ["ce_teacher"]
    batch = train.Batch(data.x_train[:8], data.y_train[:8], torch.arange(8))
    z = torch.randn(8, data.classes)
    # The control trains on the teacher's argmax, never the data's labels.
    expected = F.cross_entropy(z, logits[:8].argmax(1))
    assert TeacherLabels(TeacherCache(logits))(z, batch).item() == pytest.approx(expected.item())
    h = train.fit(mlp(data), data, VirtualTeacher(0.9, T=4.0, alpha=0.5), **FAST)
    assert list(h["terms"]) == ["kd"]


# ---------------------------------------------------------------------------------------------
# Cache descriptions: every field that changes the numbers, or a refusal that names the field.

def key(method):
    return store.key_of(describe(method))


def test_two_lambda_teachers_over_different_models_get_different_keys(data):
    a, b = mlp(data, seed=1), mlp(data, seed=2)

    def over(m):
        return Distill(lambda batch: m(batch.x))  # the same source; only the captured model differs
    assert key(over(a)) != key(over(b))
    assert key(over(a)) == key(over(mlp(data, seed=1)))  # same weights: the same key
    # A global read by the lambda counts too.
    g = types.SimpleNamespace()
    exec("teacher_model = A\nf = lambda batch: teacher_model(batch.x)", {"A": a}, vars(g))
    fn_a = g.f
    exec("teacher_model = B\nf = lambda batch: teacher_model(batch.x)", {"B": b}, vars(g))
    # exec'd functions have no source: refused, never keyed on their name.
    with pytest.raises(Uncacheable, match=r"method\.teacher is the function <lambda>, whose source kdnb can't read"):
        key(Distill(fn_a))


GLOBAL_TEACHER = None


def global_lambda():
    return lambda batch: GLOBAL_TEACHER(batch.x)


def test_globals_a_function_reads_are_in_its_description(data):
    global GLOBAL_TEACHER
    GLOBAL_TEACHER = mlp(data, seed=1)
    first = key(Distill(global_lambda()))
    GLOBAL_TEACHER = mlp(data, seed=2)
    assert key(Distill(global_lambda())) != first


def test_nested_modules_lists_and_weights_are_described(data):
    teacher = convnet(data, seed=1, width=16)
    a, b = Hint(teacher, "2", "2"), Hint(teacher, "2", "1")
    assert key(a) != key(b)  # another guided layer name
    student = convnet(data)
    train.fit(student, data, a, **{**FAST, "epochs": 1})  # builds and trains the regressor
    trained_key = key(a)
    with torch.no_grad():
        a.regressor.weight.add_(1.0)
    assert key(a) != trained_key  # the projector's weights are part of the key
    assert key(FrozenTeacher(teacher, ["5"])) != key(FrozenTeacher(teacher, ["5", "2"]))  # a list of nodes


def test_an_indescribable_field_is_refused_naming_it(data, fresh_cache):
    method = CrossEntropy()
    method.sampler = torch.Generator()
    with pytest.raises(Uncacheable, match=r"^method\.sampler is a Generator"):
        describe(method)
    with pytest.raises(Uncacheable, match=r"trained\(\) can't cache this run: method\.sampler is a Generator"):
        cached.trained({"name": "mlp", "hidden": [8]}, data, method, **FAST)
    assert not list(fresh_cache.rglob("*.pt"))


def test_a_notebook_class_without_source_is_refused(data):
    ns = {}
    exec("from kdnb.methods import CrossEntropy\nclass Mine(CrossEntropy):\n    pass\n", ns)
    with pytest.raises(Uncacheable, match=r"instance of Mine, whose source kdnb can't read"):
        describe(ns["Mine"]())


def test_the_code_key_covers_the_teacher_cache_and_only_the_methods_own_files():
    code = keys.training_code(Distill(TeacherCache(torch.zeros(4, 3))))
    assert {"kdnb.teachers", "kdnb.methods.hinton", "kdnb.methods.base", "kdnb.train", "kdnb.losses"} <= set(code)
    assert "kdnb.methods.adversarial" not in code
    assert "kdnb.methods.adversarial" in keys.training_code(GANKD(TeacherCache(torch.zeros(4, 3)), classes=3))


def test_progress_and_device_are_not_part_of_the_key(data, fresh_cache, monkeypatch):
    calls = []
    real = train.fit
    monkeypatch.setattr(train, "fit", lambda *a, **k: calls.append(1) or real(*a, **k))
    spec = {"name": "mlp", "hidden": [8]}
    args = dict(epochs=1, batch_size=64, lr=1e-3)
    cached.trained(spec, data, progress=False, device="cpu", **args)
    cached.trained(spec, data, progress=True, **args)
    assert len(calls) == 1


def test_trained_from_given_weights_is_cached_and_keyed_on_them(data, fresh_cache, monkeypatch):
    calls = []
    real = train.fit
    monkeypatch.setattr(train, "fit", lambda *a, **k: calls.append(1) or real(*a, **k))
    spec = {"name": "mlp", "hidden": [32]}
    first, _ = cached.trained(spec, data, init=mlp(data, seed=5), **FAST)
    again, _ = cached.trained(spec, data, init=mlp(data, seed=5).state_dict(), **FAST)
    assert len(calls) == 1 and all(torch.equal(a, b) for a, b in zip(first.state_dict().values(),
                                                                       again.state_dict().values()))
    cached.trained(spec, data, init=mlp(data, seed=6), **FAST)
    assert len(calls) == 2


def test_a_cache_hit_restores_the_methods_trained_parts(data, fresh_cache):
    spec = {"name": "mlp", "hidden": [32]}
    teacher = mlp(data, seed=1)
    computed = GANKD(teacher, classes=data.classes)
    cached.trained(spec, data, computed, **FAST)
    loaded = GANKD(teacher, classes=data.classes)
    cached.trained(spec, data, loaded, **FAST)
    assert all(torch.equal(a, b.cpu()) for a, b in zip(computed.state_dict().values(), loaded.state_dict().values()))


def test_cache_clear_and_prune(data, fresh_cache, capsys, monkeypatch):
    spec = {"name": "mlp", "hidden": [8]}
    cached.trained(spec, data, epochs=1, batch_size=64, lr=1e-3)
    cached.trained(spec, data, epochs=1, batch_size=64, lr=2e-3)
    [a, b] = sorted((fresh_cache / "models").glob("*.pt"))
    config = store.load(a)["config"]
    stale = {**config, "code": {**config["code"], "kdnb.train": "old-code"}}
    store.save({"config": stale, "value": {}}, fresh_cache / "models" / "stale.pt")
    store.save({"config": {**config, "code": {"kdnb.gone": "x"}}, "value": {}}, fresh_cache / "models" / "gone.pt")
    cli.main(["cache"])
    assert "4 entries" in capsys.readouterr().out
    cli.main(["cache", "prune"])
    out = capsys.readouterr().out
    assert "removed 2 entries" in out and "kept 2 entries" in out
    assert sorted((fresh_cache / "models").glob("*.pt")) == [a, b]  # what current code can hit stays
    cli.main(["cache", "clear"])
    assert "removed 2 entries" in capsys.readouterr().out
    assert not list(fresh_cache.rglob("*.pt"))


# ---------------------------------------------------------------------------------------------
# What a reader sees: one progress bar per experiment, none when progress is off.

class Bar:
    made = []

    def __init__(self, total=None, desc="", disable=False, leave=True, **kw):
        self.total, self.desc, self.disable, self.n = total, desc, disable, 0
        Bar.made.append(self)

    def update(self, n=1):
        self.n += n

    def set_postfix(self, **kw):
        pass

    def close(self):
        pass


def test_one_progress_bar_per_experiment(data, fresh_cache, monkeypatch):
    import tqdm.auto
    from kdnb.book import experiments, profiles
    monkeypatch.setattr(tqdm.auto, "tqdm", Bar)
    monkeypatch.setenv("KDNB_DEVICE", "cpu")
    p = profiles.Profile(name="test", data="digits", teacher={"name": "mlp", "hidden": [16]},
                         student={"name": "mlp", "hidden": [8]}, epochs=2, teacher_epochs=1, batch_size=64, lr=1e-3,
                         teacher_lr=1e-3)
    for progress in ("1", "1", "0"):  # computed, then from the cache, then switched off
        monkeypatch.setenv("KDNB_PROGRESS", progress)
        Bar.made = []
        experiments.students(data, CrossEntropy(), profile=p)
        [bar] = Bar.made  # the students' fits draw no bars of their own
        assert bar.desc == "3 students: CrossEntropy" and bar.total == bar.n == 6
        assert bar.disable == (progress == "0")
    Bar.made = []
    experiments.teacher(p, data)
    assert [b.desc for b in Bar.made] == ["teacher mlp on digits"]


def test_a_frozen_teacher_is_not_stored_with_the_student(data, fresh_cache):
    teacher = mlp(data, seed=1, hidden=(256,))
    method = Distill(teacher)
    assert method.state_dict() == {} and not list(method.parameters())
    cached.trained({"name": "mlp", "hidden": [8]}, data, method, **FAST)
    [entry] = (fresh_cache / "models").glob("*.pt")
    assert store.load(entry)["value"]["method"] == {}
    assert entry.stat().st_size < 0.5 * sum(p.numel() * 4 for p in teacher.parameters())
    moved = Distill(teacher).to(torch.float64)  # the held model still moves with its method
    assert next(moved.teacher.model.parameters()).dtype == torch.float64
