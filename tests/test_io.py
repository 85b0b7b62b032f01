"""Atomic writes: the umask's mode for new files, the old mode for replaced ones, fsync, nothing left on failure."""

import os
import stat

import pytest

from polysteer.io import atomic_write, write_json_atomic, write_text_atomic


def mode(path):
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_a_new_file_gets_the_umask_mode(tmp_path, umask):
    old = os.umask(umask)
    try:
        write_text_atomic(tmp_path / "a.txt", "hello")
    finally:
        os.umask(old)
    assert mode(tmp_path / "a.txt") == 0o666 & ~umask
    assert (tmp_path / "a.txt").read_text() == "hello"


def test_a_replaced_file_keeps_its_mode(tmp_path):
    target = tmp_path / "d.json"
    target.write_text("{}")
    target.chmod(0o640)
    write_json_atomic(target, {"x": 1})
    assert mode(target) == 0o640 and target.read_text() == '{\n  "x": 1\n}'


def test_the_data_is_fsynced_before_the_rename(tmp_path, monkeypatch):
    synced = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(os.readlink(f"/proc/self/fd/{fd}")), real(fd))[1])
    write_text_atomic(tmp_path / "b.txt", "data")
    assert any(name.endswith(".tmp") for name in synced)  # the temporary file, before it is renamed


def test_a_failed_write_leaves_nothing_and_keeps_the_old_file(tmp_path):
    target = tmp_path / "c.txt"
    target.write_text("old")

    def fail(tmp):
        open(tmp, "w").write("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(target, fail)
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["c.txt"]


def test_manifests_record_no_absolute_paths_unless_asked(tmp_path, monkeypatch, llama):
    import torch

    from polysteer import Direction

    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    direction = Direction(vectors={"text.blocks.0.resid_post": torch.ones(32)}, modality="text",
                          model={"name": "/home/someone/models/llama"}, d_model=32,
                          provenance={"data": str(tmp_path / "data" / "pairs.jsonl"), "sae": "/opt/saes/L12",
                                      "nested": {"files": ["/home/someone/a.txt"]}, "note": "kept"})
    manifest = direction.manifest()
    assert manifest["provenance"] == {"data": "data/pairs.jsonl", "sae": "L12", "nested": {"files": ["a.txt"]},
                                      "note": "kept"}
    assert manifest["model"] == {"name": "llama"}
    monkeypatch.setenv("POLYSTEER_FULL_PROVENANCE", "1")
    assert direction.manifest()["provenance"]["sae"] == "/opt/saes/L12"
