"""The README's Python examples run as written (in order, sharing one namespace)."""

import re
from pathlib import Path

import torch

from rnnkit.cli import main

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_examples_run(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)
    assert len(blocks) >= 4
    monkeypatch.chdir(tmp_path)  # the examples load runs/demo/full: a small run made here
    assert main(["train", "--out", "runs/demo/full", "--epochs", "1", "--limit", "8", "--embedding-dim", "8",
                 "--encoder-hidden", "8", "--context-hidden", "8", "--speaker-hidden", "8", "--quiet"]) == 0
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, str(README), "exec"), namespace)
    # Spot-check what the examples promise in their comments.
    assert namespace["out"].shape == (2, namespace["ids"].shape[1], 16)
    assert namespace["final"].shape == (2, 16)
    fused, utterances = namespace["fused"], namespace["utterances"]
    assert fused.shape == utterances.shape
    torch.testing.assert_close(fused[1, 3:], utterances[1, 3:], rtol=0, atol=0)
    gru, session = namespace["gru"], namespace["session"]  # the exported layer computes what the layer does
    x, lengths = torch.randn(6, 3, 16), torch.tensor([6, 0, 2])
    expected, expected_h_n = gru(x, lengths=lengths)
    for got, want in zip(session.run(None, {"input": x.numpy(), "lengths": lengths.numpy()}), (expected, expected_h_n)):
        torch.testing.assert_close(torch.from_numpy(got), want, rtol=1e-5, atol=1e-5)
    run, labels, probs = namespace["run"], namespace["labels"], namespace["probs"]
    assert len(labels) == 1 and len(labels[0]) == 2 and set(labels[0]) <= set(run.labels)
    assert probs.shape == (2, len(run.labels))
    torch.testing.assert_close(probs.sum(-1), torch.ones(2))
