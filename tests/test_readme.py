"""The README's Python examples run as written (in order, sharing one namespace)."""

import re
from pathlib import Path

import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_examples_run():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)
    assert len(blocks) >= 3
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, str(README), "exec"), namespace)
    # Spot-check what the examples promise in their comments.
    assert namespace["out"].shape == (2, namespace["ids"].shape[1], 16)
    assert namespace["final"].shape == (2, 16)
    fused, utterances = namespace["fused"], namespace["utterances"]
    assert fused.shape == utterances.shape
    torch.testing.assert_close(fused[1, 3:], utterances[1, 3:], rtol=0, atol=0)
