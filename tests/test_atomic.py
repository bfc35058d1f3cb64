"""Tests for rnnkit.atomic: atomic writes, their file modes and their leftovers."""

from __future__ import annotations

import os

import pytest

from rnnkit.atomic import TEMP_SUFFIX, atomic_open, atomic_write_bytes, remove_temporaries


def test_atomic_write_keeps_the_old_file_when_the_rename_fails(tmp_path, monkeypatch):
    target = tmp_path / "metrics.json"
    atomic_write_bytes(target, b"old")

    def failing_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_writes_give_the_mode_of_a_plain_open(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        atomic_write_bytes(tmp_path / "a.json", b"{}")
        with atomic_open(tmp_path / "sub" / "b.jsonl") as f:
            f.write(b"line\n")
        with open(tmp_path / "plain", "wb"):
            pass
    finally:
        os.umask(old)
    assert os.stat(tmp_path / "plain").st_mode & 0o777 == mode
    assert {p.name: p.stat().st_mode & 0o777 for p in tmp_path.rglob("*") if p.is_file()} == {
        "a.json": mode, "b.jsonl": mode, "plain": mode}
    assert (tmp_path / "sub").stat().st_mode & 0o777 == 0o777 & ~umask


def test_atomic_open_leaves_nothing_when_the_block_fails(tmp_path):
    target = tmp_path / "predictions.jsonl"
    target.write_bytes(b"old")
    with pytest.raises(KeyError):
        with atomic_open(target) as f:
            f.write(b"half")
            assert [p.name for p in tmp_path.iterdir() if p.name.endswith(TEMP_SUFFIX)], "written beside the target"
            raise KeyError("stop")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["predictions.jsonl"]


def test_remove_temporaries_removes_only_the_leftovers_of_atomic_writes(tmp_path):
    (tmp_path / "checkpoint").mkdir()
    ours = [tmp_path / f".config.json.k2j_x9{TEMP_SUFFIX}",
            tmp_path / "checkpoint" / f".trainer_state.pt.a1{TEMP_SUFFIX}"]
    theirs = [tmp_path / "notes.tmp", tmp_path / ".vocab.json.x1.tmp", tmp_path / f"visible{TEMP_SUFFIX}"]
    for path in ours + theirs:
        path.write_bytes(b"x")
    assert remove_temporaries(tmp_path) == sorted(ours)
    assert sorted(p for p in tmp_path.rglob("*") if p.is_file()) == sorted(theirs)
    assert remove_temporaries(tmp_path / "missing") == []
