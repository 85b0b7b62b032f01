"""The layout's rules are checked, not promised: import contracts, lint, and nothing machine-specific shipped."""

import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).parent.parent
SHIPPED = ("core", "plugins", "modalities")


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """A regular (non-editable) install, the layout import-linter can walk: polysteer/plugins, polysteer/modalities."""
    target = tmp_path_factory.mktemp("site")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-compile",
                    "--target", str(target), str(ROOT)], check=True, capture_output=True)
    return target


def test_import_contracts_hold(installed):
    lint = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run([str(lint), str(ROOT / "pyproject.toml"), "--no-cache"], cwd=installed,
                            env={"PYTHONPATH": str(installed), "PATH": ""}, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout and "Contracts: 3 kept" in result.stdout, result.stdout


def test_the_core_contract_names_every_core_module():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    core = next(c for c in config if c["forbidden_modules"] == ["polysteer.plugins", "polysteer.modalities"])
    modules = {f"polysteer.{p.stem}" for p in (ROOT / "core").glob("*.py") if p.stem != "__init__"}
    assert set(core["source_modules"]) == modules


def test_ruff_is_clean():
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", str(ROOT)], capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_package_directory_is_packaged():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    roots = {v: k for k, v in config["package-dir"].items()}
    found = {roots[init.parent.relative_to(ROOT).parts[0]] + "".join(f".{p}" for p in
                                                                     init.parent.relative_to(ROOT).parts[1:])
             for top in SHIPPED for init in (ROOT / top).rglob("__init__.py")}
    assert found == listed


def test_no_machine_specific_paths_in_shipped_files():
    tracked = subprocess.run(["git", "ls-files", *SHIPPED, "benchmarks"], cwd=ROOT, capture_output=True,
                             text=True, check=True).stdout.split()
    offenders = [name for name in tracked if (ROOT / name).is_file()
                 and any(marker in (ROOT / name).read_bytes() for marker in (b"/root/", b"/home/", b"/work/"))]
    assert offenders == []
