"""kdnb.book.settings: the one registry of what the book trains, and its one smoke transform."""
import re
from pathlib import Path

from kdnb.book import capacity, configs, profiles, settings

KDNB = Path(__file__).resolve().parent.parent / "kdnb"


def test_smoke_mode_is_read_in_one_place():
    readers = [p.relative_to(KDNB).as_posix() for p in KDNB.rglob("*.py")
               if re.search(r"environ[^\n]*KDNB_SMOKE", p.read_text())]
    assert readers == ["book/settings.py"]


def test_the_smoke_transform_caps_every_epoch_count_and_leaves_the_tables(monkeypatch):
    monkeypatch.setenv("KDNB_SMOKE", "1")
    full = profiles.get("full")
    assert full.epochs == full.teacher_epochs == 1 and full.transfer_set == 0
    cifar = full.extra["seed001_cifar"]
    assert cifar["teacher_fit"]["epochs"] == cifar["student_fit"]["epochs"] == 1
    assert profiles.get("quick").transfer_set == 64
    pairs = settings.chapter("feature_pairs", "full")
    assert pairs["fit"]["epochs"] == pairs["teacher_fit"]["epochs"] == pairs["stage1_epochs"] == 1
    assert pairs["seeds"] == 2 and pairs["images"] == 4 and "smoke" not in pairs
    assert settings.chapter("adversarial", "full")["others"]["svhn"]["teacher_epochs"] == 1
    assert settings.CIFAR_FIT["epochs"] == 30 and settings.PROFILES["full"].epochs == 60  # copies, not the tables
    monkeypatch.delenv("KDNB_SMOKE")
    pairs = settings.chapter("feature_pairs", "full")
    assert pairs["seeds"] == 3 and "images" not in pairs and "smoke" not in pairs


def test_one_definition_of_each_shared_setting():
    """The CIFAR-10 fits are typed once, and chapter 6's ladder and `kdnb run seed001-exp6` train
    the same networks."""
    full = settings.PROFILES["full"].extra["seed001_cifar"]
    assert full["student_fit"] is settings.CIFAR_FIT and full["teacher_fit"] is settings.CIFAR_TEACHER_FIT
    assert settings.FEATURE_PAIRS["full"]["fit"] is settings.CIFAR_FIT
    exp6 = configs.get("seed001-exp6").full
    ladder = capacity.settings("full")
    assert exp6.student_fit == ladder["fit"] == settings.LADDER_CIFAR_FIT
    assert {a.student["hidden"] for a in exp6.arms} == {ladder["spec"]["hidden"]}
