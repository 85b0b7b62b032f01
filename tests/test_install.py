"""A regular (non-editable) install works from site-packages without the repository on sys.path."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent


def test_installed_package_imports_without_the_repo(tmp_path):
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(ROOT)], check=True, capture_output=True)
    code = ("import sys, polysteer, polysteer.plugins.finders.linear, polysteer.modalities.text; "
            "from polysteer import registry; "
            "assert not any(p.rstrip('/') == %r for p in sys.path); "
            "print(polysteer.__file__); print(polysteer.modalities.text.__file__); "
            "print(','.join(registry('direction_finders').names()))") % str(ROOT)
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env={"PYTHONPATH": str(target), "PATH": ""},
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    core_file, text_file, finders = out.stdout.split()
    assert core_file.startswith(str(target)) and text_file.startswith(str(target))
    assert "diffmean" in finders.split(",")
