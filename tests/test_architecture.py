"""The architecture docs/architecture.md describes, held by the code: imports run one way between the
folders of each package, and the trainer names no kind of the store (it finds arrays by role)."""

import ast
from collections import Counter
from pathlib import Path

import pytest

from hms_prep.kinds import KINDS

from conftest import ROOT

# Each folder may import only the folders listed after it (and itself); top-level modules are free.
LAYERS = {
    "hms_prep": ["building", "kinds", "sources", "store", "synth"],  # building -> kinds -> sources -> store; synth -> sources
    "hms_train": ["run", "model", "image", "data"],  # run -> model, image -> data
}
ALLOWED = {
    ("hms_prep", "building"): {"kinds", "sources", "store"},
    ("hms_prep", "kinds"): {"sources", "store"},
    ("hms_prep", "sources"): {"store"},
    ("hms_prep", "store"): set(),
    ("hms_prep", "synth"): {"sources"},  # the synthetic Kaggle folder: its layout, never the store
    ("hms_train", "run"): {"model", "image", "data"},
    ("hms_train", "model"): set(),
    ("hms_train", "image"): {"data"},
    ("hms_train", "data"): set(),
}


def modules(package: str, folder: str):
    return sorted((ROOT / package / folder).glob("*.py"))


def imported(path: Path) -> set[str]:
    """Every module name `path` imports (at any depth of the code: lazy imports count)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("package, folder", sorted(ALLOWED))
def test_imports_run_one_way_between_the_folders(package, folder):
    others = set(LAYERS[package]) - {folder}
    for path in modules(package, folder):
        for name in imported(path):
            parts = name.split(".")
            if parts[0] == package and len(parts) > 1 and parts[1] in others:
                assert parts[1] in ALLOWED[(package, folder)], f"{path.relative_to(ROOT)} imports {name}"
            if package == "hms_train" and parts[0] == "hms_prep":  # the trainer reads the store, no math
                assert name in ("hms_prep.store.layout", "hms_prep.store.arrays", "hms_prep.store.labels",
                                "hms_prep.store.build_state", "hms_prep.store.codecs", "hms_prep.domain",
                                "hms_prep.doctor", "hms_prep.plugins", "hms_prep.registry"), f"{path.relative_to(ROOT)} imports {name}"


def test_the_trainer_names_no_kind_of_the_store():
    kinds = set(KINDS)
    assert {"eeg_mel", "kaggle", "raw"} <= kinds
    for path in sorted((ROOT / "hms_train").rglob("*.py")):
        tree = ast.parse(path.read_text())
        docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                      if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                      and node.body and isinstance(node.body[0], ast.Expr)
                      and isinstance(node.body[0].value, ast.Constant)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
                assert node.value not in kinds, f"{path.relative_to(ROOT)}:{node.lineno} names the kind {node.value!r}"


@pytest.mark.parametrize("package", sorted(LAYERS))
def test_module_names_are_unique_and_no_folder_is_named_like_a_build_output(package):
    """One `rows.py` per package, so a name in a traceback or a search names one file; and no package folder
    that common tools skip as generated output (pytest's norecursedirs holds `build` and `dist`)."""
    paths = [p for p in (ROOT / package).rglob("*.py") if p.name != "__init__.py"]
    names = Counter(p.name for p in paths)
    assert [str(p.relative_to(ROOT)) for p in paths if names[p.name] > 1] == []
    assert [p.name for p in (ROOT / package).rglob("*") if p.is_dir() and p.name in ("build", "dist", "out")] == []


# Issue 25: no module over ~350 lines outside the CLIs. store/codecs.py is split with the store's read path
# (another step of issue 25 works there); the limit is ~350 with a margin, so a small addition passes.
MAX_MODULE_LINES = 380
OVER_THE_LIMIT_FOR_NOW = {"hms_prep/store/codecs.py"}


@pytest.mark.parametrize("package", sorted(LAYERS))
def test_no_module_is_a_hub_of_many_concerns(package):
    long = {str(p.relative_to(ROOT)): len(p.read_text().splitlines()) for p in (ROOT / package).rglob("*.py")
            if p.name != "cli.py"}
    assert {path: n for path, n in long.items() if n > MAX_MODULE_LINES and path not in OVER_THE_LIMIT_FOR_NOW} == {}
