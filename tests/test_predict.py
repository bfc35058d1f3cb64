"""Tests for ``rnnkit predict`` (rnnkit.cli.predict) and the streaming it rests on (iter_file, predict_records),
and for the output checks ``rnnkit evaluate`` shares with it: errors are one line, exit status 2, nothing written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import rnnkit.cli.predict
from rnnkit.cli import main
from rnnkit.erc import DataError, Dialogue, Utterance, builtin_corpus, iter_file, load_run, predict_records, write_jsonl
from rnnkit.trainer.files import TEMP_SUFFIX

SMALL = ["--limit", "8", "--embedding-dim", "8", "--encoder-hidden", "8", "--context-hidden", "8",
         "--speaker-hidden", "8", "--batch-size", "4", "--epochs", "1", "--quiet"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("predict") / "run"
    assert main(["train", "--out", str(out), *SMALL]) == 0
    return out


def _dialogues(n: int) -> list[Dialogue]:
    """``n`` unlabeled dialogues of the built-in test split, renamed so that their ids stay unique."""
    test = builtin_corpus("test")
    return [Dialogue(f"d{k}", tuple(Utterance(u.speaker, u.text) for u in test[k % len(test)].utterances))
            for k in range(n)]


def _error_line(capsys) -> str:
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rnnkit: error: "), captured.err
    assert captured.out == ""
    return lines[0]


def _files(directory: Path) -> list[str]:
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*"))


# -- streaming ------------------------------------------------------------------------------------------------

def test_iter_file_reads_a_jsonl_file_one_dialogue_at_a_time(tmp_path):
    source = tmp_path / "talk.jsonl"
    write_jsonl(source, _dialogues(3))
    with source.open("a") as f:
        f.write('{"id": "bad", "utterances": []}\n')
    dialogues = iter_file(source)
    assert [next(dialogues).id for _ in range(3)] == ["d0", "d1", "d2"]  # read before the bad line is reached
    with pytest.raises(DataError, match=r"talk.jsonl, line 4, field 'utterances': dialogue with no utterances"):
        next(dialogues)


def test_windows_predict_what_one_call_on_all_dialogues_predicts(run_dir):
    run, dialogues = load_run(run_dir), _dialogues(70)
    whole = list(predict_records([run], dialogues, window=None))
    assert list(predict_records([run], iter(dialogues), window=1)) == whole  # windows of 32 dialogues
    assert [(r["dialogue"], r["index"]) for r in whole] == [(d.id, k) for d in dialogues
                                                            for k in range(len(d.utterances))]


@pytest.mark.parametrize("to_file", [True, False])
def test_predict_streams_many_windows(run_dir, tmp_path, capsys, monkeypatch, to_file):
    monkeypatch.setattr(rnnkit.cli.predict, "PREDICT_WINDOW", 1)  # a window per 32 dialogues
    dialogues = _dialogues(100)
    write_jsonl(tmp_path / "in.jsonl", dialogues)
    output = tmp_path / "out.jsonl"
    assert main(["predict", "--run", str(run_dir), "--input", str(tmp_path / "in.jsonl")]
                + (["--output", str(output)] if to_file else [])) == 0
    captured = capsys.readouterr()
    assert captured.err == ""  # no progress bar: stderr is not a terminal
    lines = (output.read_text() if to_file else captured.out).splitlines()
    expected = list(predict_records([load_run(run_dir)], dialogues, window=None))
    assert [json.loads(line) for line in lines] == expected
    assert _files(tmp_path) == (["in.jsonl", "out.jsonl"] if to_file else ["in.jsonl"])


@pytest.mark.parametrize("to_file", [True, False])
def test_a_bad_line_after_the_first_window_writes_nothing(run_dir, tmp_path, capsys, monkeypatch, to_file):
    monkeypatch.setattr(rnnkit.cli.predict, "PREDICT_WINDOW", 1)
    source = tmp_path / "in.jsonl"
    write_jsonl(source, _dialogues(80))
    with source.open("a") as f:
        f.write('{"id": "last", "utterances": [{"speaker": "A", "text": "Hi\\u0000there"}]}\n')
    output = tmp_path / "out.jsonl"
    argv = ["predict", "--run", str(run_dir), "--input", str(source)] + (["--output", str(output)] if to_file else [])
    assert main(argv) == 2
    assert "in.jsonl, line 81, field 'utterances[0].text': contains a NUL character" in _error_line(capsys)
    assert _files(tmp_path) == ["in.jsonl"]


# -- input the readers refuse, and empty input ----------------------------------------------------------------------

@pytest.mark.parametrize("text, problem", [
    ("\\ud83d", "contains a lone surrogate U+D83D, which UTF-8 cannot encode (character 1)"),
    ("a\\u0000", "contains a NUL character (character 2)"),
])
def test_unwritable_text_in_the_input_is_one_line(run_dir, tmp_path, capsys, text, problem):
    source = tmp_path / "in.jsonl"
    source.write_text('{"id": "d", "utterances": [{"speaker": "A", "text": "' + text + '"}]}\n')
    assert main(["predict", "--run", str(run_dir), "--input", str(source),
                 "--output", str(tmp_path / "out.jsonl")]) == 2
    assert _error_line(capsys).endswith(f"in.jsonl, line 1, field 'utterances[0].text': {problem}")
    assert _files(tmp_path) == ["in.jsonl"]


@pytest.mark.parametrize("to_file", [True, False])
def test_an_input_without_dialogues_gives_an_empty_output_and_a_warning(run_dir, tmp_path, capsys, to_file):
    source = tmp_path / "empty.jsonl"
    source.write_text("\n  \n")
    output = tmp_path / "out.jsonl"
    assert main(["predict", "--run", str(run_dir), "--input", str(source)]
                + (["--output", str(output)] if to_file else [])) == 0
    captured = capsys.readouterr()
    assert captured.err == f"rnnkit: warning: {source} holds no dialogues; the output is empty\n"
    assert captured.out == ""
    assert output.read_bytes() == b"" if to_file else not output.exists()


# -- --output that cannot be written --------------------------------------------------------------------------------

def _argv(command: str, tmp_path: Path, output: Path) -> list[str]:
    # A run directory that does not exist: only an output checked first can be the error reported.
    extra = ["--input", str(tmp_path / "in.jsonl")] if command == "predict" else []
    return [command, "--run", str(tmp_path / "no-run"), *extra, "--output", str(output)]


@pytest.mark.parametrize("command", ["predict", "evaluate"])
@pytest.mark.parametrize("where, problem", [
    ("file.txt/out.json", "cannot write the output: {tmp}/file.txt is not a directory"),
    ("missing/out.json", "cannot write the output: {tmp}/missing does not exist"),
    ("missing/deeper/out.json", "cannot write the output: {tmp}/missing/deeper does not exist"),
    ("", "is a directory; --output must name a file"),
])
def test_an_output_that_cannot_be_written_is_refused_before_any_work(tmp_path, capsys, command, where, problem):
    (tmp_path / "file.txt").write_text("keep")
    output = tmp_path / where
    assert main(_argv(command, tmp_path, output)) == 2
    assert _error_line(capsys) == f"rnnkit: error: {output}: {problem.format(tmp=tmp_path)}"
    assert _files(tmp_path) == ["file.txt"]
    assert (tmp_path / "file.txt").read_text() == "keep"


@pytest.mark.parametrize("command", ["predict", "evaluate"])
def test_an_output_directory_without_write_permission_is_refused(tmp_path, capsys, monkeypatch, command):
    # chmod cannot keep root out of a directory, so the refusal the kernel would give is simulated.
    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("rnnkit.atomic.tempfile.mkstemp", refuse)
    output = tmp_path / "out.json"
    assert main(_argv(command, tmp_path, output)) == 2
    assert _error_line(capsys) == f"rnnkit: error: {output}: cannot write the output (Permission denied)"
    assert _files(tmp_path) == []


def test_evaluate_writes_its_output_atomically_with_the_usual_mode(run_dir, tmp_path, capsys):
    old = os.umask(0o022)
    try:
        assert main(["evaluate", "--run", str(run_dir), "--output", str(tmp_path / "metrics.json")]) == 0
    finally:
        os.umask(old)
    assert json.loads((tmp_path / "metrics.json").read_text())["run"] == str(run_dir)
    assert (tmp_path / "metrics.json").stat().st_mode & 0o777 == 0o644
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(TEMP_SUFFIX)]


# -- a reader that goes away ----------------------------------------------------------------------------------------

def test_a_closed_pipe_ends_predict_quietly(run_dir, tmp_path):
    source = tmp_path / "in.jsonl"
    write_jsonl(source, _dialogues(300))  # ~3000 lines, far more than a pipe buffers
    child = subprocess.Popen([sys.executable, "-m", "rnnkit.cli", "predict", "--run", str(run_dir),
                              "--input", str(source)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = child.stdout.readline()
    child.stdout.close()  # as `rnnkit predict ... | head -1` does
    stderr = child.stderr.read()
    assert child.wait(timeout=120) == 141  # 128 + SIGPIPE, what a shell reports for `yes | head -1`
    assert json.loads(first)["dialogue"] == "d0"
    assert stderr == b""
