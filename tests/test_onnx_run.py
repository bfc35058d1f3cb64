"""rnnkit.erc.onnx_run, ``rnnkit export`` and ``rnnkit predict --onnx``: the exported model, run by onnxruntime,
against the torch model of the run it came from, on ragged batches of dialogues with 1, 2 and 5 speakers."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from rnnkit.cli import main
from rnnkit.erc import (
    Dialogue,
    RunError,
    Utterance,
    builtin_corpus,
    collate_dialogues,
    export_run,
    load_onnx,
    load_run,
    write_jsonl,
)
from rnnkit.export import export_onnx
from rnnkit.layers import GRU

TOL = {"rtol": 1e-5, "atol": 1e-5}
SMALL = ["--limit", "8", "--embedding-dim", "8", "--encoder-hidden", "8", "--context-hidden", "8",
         "--batch-size", "4", "--epochs", "1", "--quiet"]
FEATURE_WIDTH = 6
# Each run differs in what the graph must express: a fusion projection or none, stacked layers, chars, ablations.
RUNS = {
    "words": ["--speaker-hidden", "5", "--num-layers", "2"],  # fusion output 10 != 16: a projection
    "chars-no-context": ["--encoder", "chars", "--speaker-hidden", "8", "--no-context"],  # 16 == 16: none
    "no-speaker": ["--speaker-hidden", "8", "--no-speaker"],
    "features": ["--speaker-hidden", "3"],  # 6 == 6: none
}


def _features(directory: Path, name: str, rows: int, seed: int = 0) -> Path:
    path = directory / f"{name}.npy"
    np.save(path, np.random.default_rng(seed).standard_normal((rows, FEATURE_WIDTH)).astype(np.float32))
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """One tiny run per entry of RUNS, trained on the built-in corpus."""
    root = tmp_path_factory.mktemp("onnx")
    for split in ("train", "dev", "test"):
        _features(root, split, sum(len(d.utterances) for d in builtin_corpus(split)[:8]))
    out = {}
    for name, flags in RUNS.items():
        extra = ["--encoder", f"features:{root}/{{split}}.npy"] if name == "features" else []
        out[name] = root / name
        assert main(["train", "--out", str(out[name]), *SMALL, *flags, *extra]) == 0
    return out


def _ragged() -> list[Dialogue]:
    """Dialogues of 1, 2 and 5 speakers and of 1 to 9 utterances, in a ragged order, with the corpus's words."""
    texts = [u.text for d in builtin_corpus("test") for u in d.utterances]
    plans = ["A A A A", "A B B A B A A", "A B C D E A C E B", "Z", "B A", "E D C B A"]
    return [Dialogue(f"d{k}", tuple(Utterance(s, texts[(7 * k + i) % len(texts)]) for i, s in enumerate(plan.split())))
            for k, plan in enumerate(plans)]


def _loaded(runs, name, tmp_path, dialogues):
    """The run ``name`` (with a features file for ``dialogues`` when it reads features) and its OnnxRun."""
    if name != "features":
        run = load_run(runs[name])
        export_run(run, tmp_path / "model.onnx")
        return run, load_onnx(tmp_path / "model.onnx")
    rows = _features(tmp_path, "input", sum(len(d.utterances) for d in dialogues), seed=1)
    run = load_run(runs[name], encoder=f"features:{rows}")
    export_run(run, tmp_path / "model.onnx")
    return run, load_onnx(tmp_path / "model.onnx", run)


@pytest.mark.parametrize("name", list(RUNS))
def test_onnxruntime_gives_the_runs_probabilities(runs, name, tmp_path):
    dialogues = _ragged()
    run, exported = _loaded(runs, name, tmp_path, dialogues)
    assert exported.labels == run.labels
    for expected, got in zip(run.probabilities(dialogues), exported.probabilities(dialogues), strict=True):
        torch.testing.assert_close(got, expected, **TOL)
    assert exported.predict(dialogues) == run.predict(dialogues)


@pytest.mark.parametrize("name", ["words", "features"])
def test_any_batch_shape_and_any_speaker_ids(runs, name, tmp_path):
    """One session, batches of several (B, U, W) shapes; speaker ids negative or large, padding ids anything."""
    dialogues = _ragged()
    run, exported = _loaded(runs, name, tmp_path, dialogues)
    run.model.encoder.prepare(dialogues)
    for chunk in (dialogues, dialogues[3:4], dialogues[:3], dialogues[::-1]):
        batch = collate_dialogues(chunk, run.model.encoder, None)
        real = torch.arange(batch.speakers.shape[1]) < batch.lengths[:, None]  # (B, U)
        batch.speakers = torch.where(real, batch.speakers * 10**12 - 7, batch.speakers.new_tensor(2))
        with torch.no_grad():
            expected = run.model(batch).softmax(-1)  # (B, U, L)
        got = torch.from_numpy(exported.session.run(["probabilities"], exported._feeds(batch))[0])
        torch.testing.assert_close(got[real], expected[real], **TOL)


def test_the_file_declares_dynamic_axes_and_its_metadata(runs, tmp_path):
    model = export_run(runs["words"], tmp_path / "model.onnx")
    assert onnx.load(tmp_path / "model.onnx") == model
    dims = {value.name: [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]
            for value in (*model.graph.input, *model.graph.output)}
    run = load_run(runs["words"])
    L = len(run.labels)
    assert dims == {"tokens": ["B", "U", "W"], "token_lengths": ["B", "U"], "speakers": ["B", "U"], "lengths": ["B"],
                    "logits": ["B", "U", L], "probabilities": ["B", "U", L]}
    metadata = {p.key: p.value for p in model.metadata_props}
    assert json.loads(metadata["labels"]) == run.labels
    assert json.loads(metadata["vocab"]) == run.model.encoder.vocab.tokens
    assert metadata["encoder"] == "words" and json.loads(metadata["max_tokens"]) is None
    features = export_run(load_run(runs["features"]))
    assert [value.name for value in features.graph.input] == ["utterances", "speakers", "lengths"]
    assert [d.dim_param or d.dim_value for d in features.graph.input[0].type.tensor_type.shape.dim] == \
        ["B", "U", FEATURE_WIDTH]
    assert "Dropout" not in {node.op_type for node in model.graph.node}


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _same_records(onnx_records, torch_records):
    assert len(onnx_records) == len(torch_records) > 0
    for got, expected in zip(onnx_records, torch_records):
        assert got.keys() == expected.keys()
        assert {k: v for k, v in got.items() if k != "probabilities"} == \
            {k: v for k, v in expected.items() if k != "probabilities"}
        assert got["probabilities"].keys() == expected["probabilities"].keys()
        for label, p in got["probabilities"].items():
            assert p == pytest.approx(expected["probabilities"][label], abs=1e-5)


def test_cli_predict_through_onnx_equals_predict(runs, tmp_path, capsys):
    dialogues = _ragged() + builtin_corpus("test")[:5]
    write_jsonl(tmp_path / "input.jsonl", dialogues)
    assert main(["export", "--run", str(runs["words"]), "--out", str(tmp_path / "model.onnx")]) == 0
    assert capsys.readouterr().out.startswith(f"wrote {tmp_path / 'model.onnx'}: inputs tokens, token_lengths")
    assert main(["predict", "--run", str(runs["words"]), "--input", str(tmp_path / "input.jsonl"),
                 "--output", str(tmp_path / "torch.jsonl")]) == 0
    assert main(["predict", "--onnx", str(tmp_path / "model.onnx"), "--input", str(tmp_path / "input.jsonl"),
                 "--output", str(tmp_path / "onnx.jsonl")]) == 0
    _same_records(_records(tmp_path / "onnx.jsonl"), _records(tmp_path / "torch.jsonl"))
    assert main(["predict", "--onnx", str(tmp_path / "model.onnx"), "--input", str(tmp_path / "input.jsonl")]) == 0
    assert [json.loads(line) for line in capsys.readouterr().out.splitlines()] == _records(tmp_path / "onnx.jsonl")


def test_cli_predict_through_onnx_with_a_features_run(runs, tmp_path, capsys):
    dialogues = _ragged()
    write_jsonl(tmp_path / "input.jsonl", dialogues)
    rows = _features(tmp_path, "input", sum(len(d.utterances) for d in dialogues), seed=2)
    model = tmp_path / "model.onnx"
    assert main(["export", "--run", str(runs["features"]), "--out", str(model)]) == 0
    assert "encoder is not in the graph: predict with --onnx" in capsys.readouterr().out
    common = ["--input", str(tmp_path / "input.jsonl"), "--features", str(rows)]
    assert main(["predict", "--run", str(runs["features"]), *common, "--output", str(tmp_path / "torch.jsonl")]) == 0
    assert main(["predict", "--onnx", str(model), "--run", str(runs["features"]), *common,
                 "--output", str(tmp_path / "onnx.jsonl")]) == 0
    _same_records(_records(tmp_path / "onnx.jsonl"), _records(tmp_path / "torch.jsonl"))
    assert main(["predict", "--onnx", str(model), *common]) == 2
    assert "which is not in the graph: give the run it was exported from too" in _error_line(capsys)


def _error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rnnkit: error: "), err
    return lines[0]


def test_export_errors_are_one_line(runs, tmp_path, capsys):
    out = str(tmp_path / "model.onnx")
    assert main(["export", "--run", str(tmp_path / "missing"), "--out", out]) == 2
    assert "missing: run directory not found" in _error_line(capsys)
    assert main(["export", "--run", str(runs["words"]), "--out", str(tmp_path / "no" / "model.onnx")]) == 2
    assert "cannot write the output" in _error_line(capsys)
    assert main(["export", "--run", str(runs["words"]), "--out", str(tmp_path)]) == 2
    assert "is a directory; --out must name a file" in _error_line(capsys)
    assert main(["export", "--run", str(runs["words"])]) == 2
    assert "--out" in _error_line(capsys)
    assert not list(tmp_path.iterdir())


def test_without_onnx_the_commands_say_what_to_install(runs, tmp_path, capsys, monkeypatch):
    """Exporting needs onnx, predicting onnxruntime (and not onnx)."""
    out = tmp_path / "model.onnx"
    export_run(runs["words"], out)
    write_jsonl(tmp_path / "input.jsonl", _ragged())
    predict = ["predict", "--onnx", str(out), "--input", str(tmp_path / "input.jsonl")]
    with monkeypatch.context() as patch:
        patch.setitem(sys.modules, "onnx", None)  # a None entry makes the import fail as if not installed
        assert main(["export", "--run", str(runs["words"]), "--out", str(tmp_path / "other.onnx")]) == 2
        assert _error_line(capsys).endswith('pip install "rnnkit[onnx]"')
        assert main(predict) == 0
    assert not (tmp_path / "other.onnx").exists()
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    assert main(predict) == 2
    assert _error_line(capsys).endswith('pip install "rnnkit[onnx]"')


def test_predict_onnx_errors_are_one_line(runs, tmp_path, capsys):
    write_jsonl(tmp_path / "input.jsonl", _ragged())
    source = ["--input", str(tmp_path / "input.jsonl")]
    assert main(["predict", *source]) == 2
    assert "one of --run and --onnx is required" in _error_line(capsys)
    assert main(["predict", "--onnx", str(tmp_path / "none.onnx"), *source]) == 2
    assert "none.onnx: ONNX file not found" in _error_line(capsys)
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    assert main(["predict", "--onnx", str(tmp_path / "junk.onnx"), *source]) == 2
    assert "junk.onnx: cannot load the ONNX model" in _error_line(capsys)
    export_onnx(GRU(3, 4), tmp_path / "gru.onnx")
    assert main(["predict", "--onnx", str(tmp_path / "gru.onnx"), *source]) == 2
    assert "not an ERC model written by 'rnnkit export'" in _error_line(capsys)
    export_run(runs["words"], tmp_path / "words.onnx")
    assert main(["predict", "--onnx", str(tmp_path / "words.onnx"), "--run", str(runs["words"]),
                 str(runs["no-speaker"]), *source]) == 2
    assert "--onnx takes one --run" in _error_line(capsys)
    export_run(runs["features"], tmp_path / "features.onnx")
    with pytest.raises(RunError, match="vectors of width 6, but the run's encoder makes them 16 wide"):
        load_onnx(tmp_path / "features.onnx", load_run(runs["words"]))


def test_onnxruntime_alone_runs_the_file(runs, tmp_path):
    """The file is plain ONNX: onnxruntime alone runs it on inputs made as the module docstring says."""
    export_run(runs["words"], tmp_path / "model.onnx")
    session = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    tokens = np.array([[[2, 3, 0], [4, 0, 0]]], dtype=np.int64)  # (1, 2, 3)
    logits, probabilities = session.run(None, {"tokens": tokens, "token_lengths": np.array([[2, 1]]),
                                               "speakers": np.array([[0, 1]]), "lengths": np.array([2])})
    assert probabilities.shape == logits.shape == (1, 2, len(load_run(runs["words"]).labels))
    np.testing.assert_allclose(probabilities, torch.from_numpy(logits).softmax(-1).numpy(), **TOL)
