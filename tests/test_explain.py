"""Tests for rnnkit.erc.explain and ``rnnkit explain``: the numbers drawn against torch.nn.LSTMCell stepped over each
sequence, the pictures written, bad input refused."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rnnkit.cli import main
from rnnkit.erc import Dialogue, Utterance, builtin_corpus, explain_dialogues, load_run, write_jsonl
from rnnkit.erc.plots import EXPLANATION_DPI, explanation_figsize

# Two layers and a speaker-history width unlike the utterance width (16): the stacked path and the projection.
SMALL = ["--limit", "8", "--embedding-dim", "8", "--encoder-hidden", "8", "--context-hidden", "5",
         "--speaker-hidden", "6", "--num-layers", "2", "--batch-size", "4", "--epochs", "1", "--quiet"]
SPEAKERS = ("Ann", "Ben", "Cy", "Dee")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("explain") / "run"
    assert main(["train", "--out", str(out), *SMALL]) == 0
    return out


def _dialogues() -> list[Dialogue]:
    """Corpus dialogues of several lengths, one of 30 utterances by four speakers (half unlabeled) and one of a
    single utterance."""
    long = Dialogue("long/30", tuple(Utterance(SPEAKERS[(k * k) % 4], f"turn {k}: the train is late again",
                                               "joy" if k % 2 else None) for k in range(30)))
    return [*builtin_corpus("test")[:3], long, Dialogue("one", (Utterance("Eve", "Fine."),))]


def _reference(lstm: nn.Module, x: torch.Tensor) -> np.ndarray:
    """Mean i, f, o gate activations (n, dirs, T, 3) of ``lstm`` over one unpadded sequence ``x`` (T, D): a
    torch.nn.LSTMCell with the layer's weights carries the state step by step, the backward direction from the
    sequence's last step; the gates are read from the cell's own parameters (torch's order i, f, g, o) and must
    reproduce the cell's next state."""
    T, dirs = x.shape[0], 2 if lstm.bidirectional else 1
    layers = []
    for layer in range(lstm.num_layers):
        outputs, means = [], []
        for direction in range(dirs):
            suffix = f"_l{layer}" + ("_reverse" if direction else "")
            cell = nn.LSTMCell(x.shape[1], lstm.hidden_size, dtype=x.dtype)
            for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                getattr(cell, name).data.copy_(getattr(lstm, name + suffix))
            h, c = x.new_zeros(1, lstm.hidden_size), x.new_zeros(1, lstm.hidden_size)
            out, mean = [None] * T, [None] * T
            for t in (range(T) if direction == 0 else reversed(range(T))):
                a_i, a_f, a_g, a_o = (F.linear(x[t : t + 1], cell.weight_ih, cell.bias_ih)
                                      + F.linear(h, cell.weight_hh, cell.bias_hh)).chunk(4, -1)
                i, f, o = torch.sigmoid(a_i), torch.sigmoid(a_f), torch.sigmoid(a_o)
                h_next, c_next = cell(x[t : t + 1], (h, c))
                torch.testing.assert_close(c_next, f * c + i * torch.tanh(a_g))
                torch.testing.assert_close(h_next, o * torch.tanh(c_next))
                h, c = h_next, c_next
                out[t], mean[t] = h[0], torch.stack([i.mean(), f.mean(), o.mean()])
            outputs.append(torch.stack(out))
            means.append(torch.stack(mean))
        x = torch.cat(outputs, -1)  # (T, dirs*H): the next layer's input
        layers.append(torch.stack(means))
    return torch.stack(layers).detach().double().numpy()


def _captured(run, dialogues: list[Dialogue]) -> tuple[list, list]:
    """What enters the context LSTM and the fusion (and what the fusion returns) during prediction."""
    context, fusion = [], []
    hooks = [run.model.context.register_forward_hook(
                 lambda m, args, kwargs, out: context.append((args[0], kwargs["lengths"])), with_kwargs=True),
             run.model.fusion.register_forward_hook(lambda m, args, out: fusion.append((*args, out)))]
    run.probabilities(dialogues)
    for hook in hooks:
        hook.remove()
    return context, fusion


def test_explained_numbers_equal_a_step_by_step_lstm_cell(run_dir):
    run, dialogues = load_run(run_dir), _dialogues()
    explanations = explain_dialogues(run, dialogues)
    (x, lengths), = _captured(run, dialogues)[0]  # one batch: fewer dialogues than EVAL_BATCH_SIZE
    (utterances, speakers, _, fused), = _captured(run, dialogues)[1]
    probabilities = run.probabilities(dialogues)
    for b, (dialogue, e) in enumerate(zip(dialogues, explanations)):
        n = int(lengths[b])
        assert n == len(dialogue.utterances) and e.dialogue == dialogue and e.labels == run.labels
        np.testing.assert_allclose(e.probabilities, probabilities[b].double().numpy(), rtol=0, atol=1e-12)
        assert e.context_gates.shape == (2, 2, n, 3)
        np.testing.assert_allclose(e.context_gates, _reference(run.model.context, x[b, :n].double()), atol=1e-6)

        expected = np.zeros((2, 2, n, 3))
        for speaker in set(speakers[b, :n].tolist()):
            turns = (speakers[b, :n] == speaker).nonzero().squeeze(1)
            expected[:, :, turns.numpy()] = _reference(run.model.fusion.rnn, utterances[b, turns].double())
        np.testing.assert_allclose(e.speaker_gates, expected, atol=1e-6)

        added, whole = (fused - utterances)[b, :n].double(), fused[b, :n].double()
        np.testing.assert_allclose(e.history_share, (added.norm(dim=-1) / whole.norm(dim=-1)).numpy(), atol=1e-6)
    assert len({len(set(u.speaker for u in d.utterances)) for d in dialogues}) > 1
    assert explanations[3].predictions == run.predict([dialogues[3]])[0]


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def test_explain_draws_one_picture_per_dialogue(run_dir, tmp_path, capsys):
    dialogues = _dialogues()
    write_jsonl(tmp_path / "input.jsonl", dialogues)
    out = tmp_path / "pictures" / "new"
    assert main(["explain", "--run", str(run_dir), "--input", str(tmp_path / "input.jsonl"), "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == f"5 picture(s) in {out}"
    paths = sorted(out.iterdir())
    assert [p.name for p in paths] == ["0000-test-0000.png", "0001-test-0001.png", "0002-test-0002.png",
                                       "0003-long_30.png", "0004-one.png"]
    explanations = explain_dialogues(load_run(run_dir), dialogues)
    sizes = [_png_size(path) for path in paths]
    for size, explanation in zip(sizes, explanations):
        assert size == tuple(round(inches * EXPLANATION_DPI) for inches in explanation_figsize(explanation))
    assert len({width for width, _ in sizes}) == 1  # the same panels for every dialogue of a run
    assert sizes[3][1] >= 30 * 0.3 * EXPLANATION_DPI  # 30 rows of at least 0.3 inch each


@pytest.mark.parametrize("argv, expected", [
    (["--input", "missing.jsonl"], "missing.jsonl"),
    (["--input", "bad.jsonl"], "bad.jsonl, line 1"),
    (["--run", "no-such-run"], "no-such-run: run directory not found"),
    (["--out", "a-file"], "a-file: is not a directory"),
])
def test_bad_input_is_one_line_and_writes_nothing(run_dir, tmp_path, monkeypatch, capsys, argv, expected):
    monkeypatch.chdir(tmp_path)
    write_jsonl(tmp_path / "good.jsonl", _dialogues()[:1])
    (tmp_path / "bad.jsonl").write_text("{not json\n")
    (tmp_path / "a-file").write_text("")
    args = {"--run": str(run_dir), "--input": "good.jsonl", "--out": "pictures"}
    args.update(zip(argv[::2], argv[1::2]))
    assert main(["explain", *(item for pair in args.items() for item in pair)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("rnnkit: error: ") and expected in err
    assert not (tmp_path / "pictures").exists()


def test_an_input_without_dialogues_draws_nothing(run_dir, tmp_path, capsys):
    (tmp_path / "empty.jsonl").write_text("")
    argv = ["explain", "--run", str(run_dir), "--input", str(tmp_path / "empty.jsonl"), "--out", str(tmp_path / "out")]
    assert main(argv) == 0
    assert "holds no dialogues" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
