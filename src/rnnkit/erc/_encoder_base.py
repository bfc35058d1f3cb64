"""What every utterance encoder shares: the :class:`UtteranceEncoder` interface, the pass-through kind whose
vectors are ready at batch time, and the (B, U) grid that the real utterances of a batch are scattered into.

Shapes: B dialogues, U utterances (padded), N real utterances, D utterance width.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

from rnnkit.erc.data import Dialogue, Utterance
from rnnkit.trainer import atomic_write_bytes

__all__ = ["ENCODER_FILE", "CONTEXT_SEPARATOR", "UtteranceEncoder", "PassThroughEncoder", "grid", "scatter"]

ENCODER_FILE = "encoder.json"
CONTEXT_SEPARATOR = " | "  # between the turns of an utterance's context


class UtteranceEncoder(nn.Module):
    """What the ERC model needs from an encoder; ``output_size`` is D_utt."""

    output_size: int
    speaker_in_text = False
    context_turns = 0

    def text_of(self, utterance: Utterance) -> str:
        """What the encoder reads: ``"Name: text"`` with ``speaker_in_text``, so that the encoder itself sees
        who speaks (a pretrained model knows names, and a name carries a speaker's habits), else the text."""
        return f"{utterance.speaker}: {utterance.text}" if self.speaker_in_text else utterance.text

    def readings(self, dialogues: list[Dialogue]) -> tuple[list[str], list[str] | None]:
        """The text of every utterance of ``dialogues`` (dialogue-major) and, with ``context_turns`` > 0, each
        one's context: the texts of up to ``context_turns`` turns before it in its dialogue, the most recent
        first (so that cutting the context at its end drops the oldest words), joined by ``CONTEXT_SEPARATOR``;
        ``""`` for a dialogue's first utterance. Without context turns the contexts are None."""
        texts = [self.text_of(u) for d in dialogues for u in d.utterances]
        if not self.context_turns:
            return texts, None
        contexts, start = [], 0
        for d in dialogues:
            own = texts[start : start + len(d.utterances)]
            start += len(own)
            contexts += [CONTEXT_SEPARATOR.join(own[max(0, t - self.context_turns) : t][::-1]) for t in range(len(own))]
        return texts, contexts

    def batch_inputs(self, dialogues: list[Dialogue]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def prepare(self, dialogues: list[Dialogue], split: str | None = None) -> None:
        """Get ready to batch ``dialogues`` of ``split``; nothing to do for trainable encoders."""

    def num_tokens(self, dialogue: Dialogue) -> int:
        """What ``TrainerConfig.token_budget`` counts for ``dialogue``: here one per utterance (one vector each)."""
        return len(dialogue.utterances)

    def save(self, run_dir: str | os.PathLike) -> None:
        """Write ``encoder.json`` (and what else :func:`load_encoder` needs) into ``run_dir``."""
        atomic_write_bytes(Path(run_dir) / ENCODER_FILE, json.dumps(self._description(), indent=1).encode())

    def _description(self) -> dict:
        return {"output_size": self.output_size}


def grid(dialogues: list[Dialogue]) -> tuple[int, int, torch.Tensor]:
    """B, U and the flat (B*U) positions of the real utterances, dialogue-major."""
    lengths = torch.tensor([len(d.utterances) for d in dialogues])  # (B,)
    B, U = len(dialogues), int(lengths.max())
    real = torch.arange(U)[None, :] < lengths[:, None]  # (B, U)
    return B, U, real.view(-1).nonzero().squeeze(1)


def scatter(rows: torch.Tensor, B: int, U: int, where: torch.Tensor) -> torch.Tensor:
    """(B, U, *) zeros with ``rows`` (N, *) at the flat positions ``where``."""
    return rows.new_zeros(B * U, *rows.shape[1:]).index_put((where,), rows).view(B, U, *rows.shape[1:])


class PassThroughEncoder(UtteranceEncoder):
    """An encoder whose vectors are ready at batch time: ``inputs["features"]`` (B, U, D)."""

    def _rows(self, dialogues: list[Dialogue]) -> torch.Tensor:
        raise NotImplementedError

    def batch_inputs(self, dialogues):
        B, U, where = grid(dialogues)
        return {"features": scatter(self._rows(dialogues), B, U, where)}  # (B, U, D)

    def forward(self, inputs):
        return inputs["features"]
