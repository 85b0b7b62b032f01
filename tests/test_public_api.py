"""The public API: every name in a public ``__all__`` imports, and benchmarks and README use public names only.

Public modules are the packages whose ``__init__`` defines ``__all__``: ``polysteer``, each modality package (and the
text modality's ``sae``, ``trained`` and ``evaluators``), and each plugin family.
"""

import ast
import importlib
import inspect
import pkgutil
import re
from pathlib import Path

import pytest

import polysteer

ROOT = Path(__file__).resolve().parent.parent
PUBLIC = (
    "polysteer",
    "polysteer.modalities.text", "polysteer.modalities.text.evaluators", "polysteer.modalities.text.refusal",
    "polysteer.modalities.text.sae",
    "polysteer.modalities.text.trained", "polysteer.modalities.music", "polysteer.modalities.vision_language",
    "polysteer.plugins.detection", "polysteer.plugins.finders", "polysteer.plugins.operators", "polysteer.plugins.rfm",
    "polysteer.plugins.sae", "polysteer.plugins.schedules",
)
BENCHMARKS = sorted((ROOT / "benchmarks").glob("*.py"))
README_BLOCKS = re.findall(r"^```python\n(.*?)^```", (ROOT / "README.md").read_text(encoding="utf-8"),
                           flags=re.S | re.M)


def polysteer_imports(tree: ast.AST) -> list[tuple[str, str | None]]:
    """``(module, name)`` per ``from polysteer... import name``; ``(module, None)`` per ``import polysteer...``."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module.split(".")[0] == "polysteer":
            found += [(node.module, alias.name) for alias in node.names]
        elif isinstance(node, ast.Import):
            found += [(alias.name, None) for alias in node.names if alias.name.split(".")[0] == "polysteer"]
    return found


def non_public(tree: ast.AST) -> list[str]:
    bad = []
    for module, name in polysteer_imports(tree):
        if name is not None and f"{module}.{name}" in PUBLIC:  # `from polysteer.modalities import text`
            continue
        if module not in PUBLIC:
            bad.append(f"{module} is not public" + (f" (importing {name})" if name else ""))
        elif name is not None and name not in importlib.import_module(module).__all__:
            bad.append(f"{name} is not in {module}.__all__")
    return bad


@pytest.fixture(scope="module", autouse=True)
def every_submodule_imported():
    """Load every submodule first, as the CLI does: a submodule must never shadow a public name of its package."""
    for package in ("polysteer.modalities", "polysteer.plugins"):
        for info in pkgutil.walk_packages(importlib.import_module(package).__path__, f"{package}."):
            importlib.import_module(info.name)


@pytest.mark.parametrize("module", PUBLIC)
def test_every_public_name_imports(module):
    mod = importlib.import_module(module)
    assert len(set(mod.__all__)) == len(mod.__all__), "duplicates in __all__"
    for name in mod.__all__:
        value = getattr(mod, name)
        assert not inspect.ismodule(value), f"{module}.{name} is a module, not the public name"
        assert name in dir(mod)


def test_plugin_author_helpers_are_top_level():
    for name in ("check_inputs", "finish_direction", "ModelFinder", "Operator", "Schedule", "Evaluator", "Modality",
                 "operator_param_key", "read_contrastive", "PolysteerError", "hookimpl"):
        assert name in polysteer.__all__


@pytest.mark.parametrize("path", BENCHMARKS, ids=lambda p: p.name)
def test_benchmarks_import_only_public_names(path):
    assert non_public(ast.parse(path.read_text(encoding="utf-8"))) == []


@pytest.mark.parametrize("index", range(len(README_BLOCKS)), ids=lambda i: f"block{i + 1}")
def test_readme_uses_only_public_names(index):
    tree = ast.parse(README_BLOCKS[index])
    assert non_public(tree) == []
    dotted = {ast.unparse(n) for n in ast.walk(tree) if isinstance(n, ast.Attribute)
              and isinstance(n.value, ast.Name) and n.value.id == "polysteer"}
    assert {name.split(".")[1] for name in dotted} <= set(polysteer.__all__)


def test_the_checker_flags_internal_imports():
    tree = ast.parse("from polysteer.io import atomic_write\nimport polysteer.engine\nfrom polysteer import nope\n"
                     "from polysteer.modalities import text\nfrom polysteer.modalities.text import load_model\n")
    assert non_public(tree) == ["polysteer.io is not public (importing atomic_write)",
                                "polysteer.engine is not public", "nope is not in polysteer.__all__"]
