"""kdnb's layers: a module imports only from layers below it (function-level imports included),
so there is no import cycle; and ``kdnb.methods`` holds one module per family."""
import ast
from pathlib import Path

import pytest

KDNB = Path(__file__).resolve().parent.parent / "kdnb"
LIBRARY = [
    {"checks", "store", "device"},                            # ground: no KD knowledge
    {"losses", "models", "data", "keys", "lm"},               # tensors; cache keys (describe, code, data)
    {"teachers", "augment"},                                  # frozen teachers, cached outputs, feature taps; views
    {"methods.base"},                                         # the protocol
    {"methods.hinton"},                                       # what other methods build on
    {"methods.teacher_free", "methods.features", "methods.adversarial", "methods.tokens"},
    {"methods.attention", "methods.projectors", "methods"},  # feature methods on features' base
    {"train"},                                                # the one loop
    {"sweep", "deploy"},                                      # many models at once, deployment
    {"cached"},                                               # trained, trained_grid: one memo path
    {"chains"},                                               # teacher → assistant → student, each cached
    {"__init__"},
]
BOOK = [  # the textbook's layer, above the whole library: never imported by it
    {"book.settings"},                                        # the one registry of what is trained
    {"book.profiles", "book.configs", "book.plots"},          # the registry read; figures and tables
    {"book.experiments", "book.capacity", "book.report", "book.stats"},  # chapters' experiments; results read
    {"book.feature_pairs", "book.run"},                       # chapter 7's pairs; a config run
    {"book.widgets", "book.cli", "book"},                     # faces
]
LAYERS = LIBRARY + BOOK
LAYER = {name: i for i, names in enumerate(LAYERS) for name in names}


def module_name(path):
    rel = path.relative_to(KDNB).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts = parts[:-1]
    return ".".join(parts)


def imports(path):
    """kdnb modules ``path`` imports, anywhere in the file."""
    here = module_name(path).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[:len(package) - (node.level - 1)] if node.level > 1 else package
            target = ".".join(base + ([node.module] if node.module else []))
            if node.module is None:  # from . import a, b
                found |= {".".join(base + [a.name]) for a in node.names}
            else:
                found.add(target)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            found |= {n[len("kdnb."):] for n in names if n.startswith("kdnb.")}
    return {f for f in found if f in LAYER or f.split(".")[0] in LAYER}


MODULES = sorted(p for p in KDNB.rglob("*.py") if "__pycache__" not in p.parts)


def test_every_module_has_a_layer():
    assert {module_name(p) for p in MODULES} - {"__init__"} <= set(LAYER)


@pytest.mark.parametrize("path", MODULES, ids=module_name)
def test_imports_only_go_down(path):
    me = module_name(path)
    for target in imports(path):
        target = target if target in LAYER else target.split(".")[0]
        assert LAYER[target] < LAYER[me] or (me == "methods" and target.startswith("methods.")), \
            f"kdnb.{me} (layer {LAYER[me]}) imports kdnb.{target} (layer {LAYER[target]})"


@pytest.mark.parametrize("path", [p for p in MODULES if not module_name(p).startswith("book")], ids=module_name)
def test_the_library_never_imports_the_book(path):
    """kdnb outside kdnb.book holds no chapter, profile, config or smoke mode: it imports none."""
    found = [t for t in imports(path) if t == "book" or t.startswith("book.")]
    assert not found, f"kdnb.{module_name(path)} (the library) imports kdnb.{found[0]} (the book)"
    assert "KDNB_SMOKE" not in path.read_text(), f"kdnb.{module_name(path)} reads $KDNB_SMOKE: the book's"
