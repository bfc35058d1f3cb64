"""The ERC training loss: cross-entropy over the labeled utterances, optionally class-weighted and smoothed, plus
an optional supervised contrastive term on the fused utterance vectors.

Shapes: B dialogues, U utterances (padded), N utterances, F feature width, L labels.
"""

from __future__ import annotations

import torch
from torch import nn

from rnnkit.erc.model import IGNORE_INDEX
from rnnkit.erc.records import Dialogue

__all__ = ["erc_loss", "class_weights", "supervised_contrastive"]


def erc_loss(model: nn.Module, batch, weights: torch.Tensor | None = None,
             label_smoothing: float = 0.0, contrastive: float = 0.0) -> torch.Tensor:
    """Cross-entropy averaged over the labeled utterances of the batch (0 when there are none); with class
    ``weights`` (L,), the weighted mean (each utterance's term times the weight of its label, over their sum);
    ``label_smoothing`` as in torch's ``cross_entropy``. With ``contrastive`` > 0, plus that times the
    supervised contrastive loss of the labeled utterances' fused vectors (``ERCModel.forward(features=True)``)."""
    if contrastive:
        logits, fused = model(batch, features=True)  # (B, U, L), (B, U, F)
    else:
        logits = model(batch)  # (B, U, L)
    labels = batch.labels.reshape(-1)  # (B*U,)
    if weights is not None:
        weights = weights.to(logits.device)
    total = nn.functional.cross_entropy(logits.reshape(labels.numel(), -1), labels, weight=weights,
                                        ignore_index=IGNORE_INDEX, reduction="sum", label_smoothing=label_smoothing)
    keep = labels.ne(IGNORE_INDEX)  # (B*U,)
    labeled = labels[keep]  # (N,)
    if not labeled.numel():
        return total  # 0, still attached to the graph
    loss = total / (labeled.numel() if weights is None else weights[labeled].sum())
    if contrastive:
        loss = loss + contrastive * supervised_contrastive(fused.reshape(labels.numel(), -1)[keep], labeled)
    return loss


def class_weights(dialogues: list[Dialogue], labels: list[str], power: float) -> torch.Tensor | None:
    """(L,) loss weights ``(count / mean count) ** -power`` from the label counts of ``dialogues`` (a class never
    seen counts as one); None for ``power`` 0. 0.5 weighs by the inverse square root of frequency, 1 by its inverse."""
    if power == 0:
        return None
    index = {label: i for i, label in enumerate(labels)}
    counts = torch.zeros(len(labels))
    for dialogue in dialogues:
        for utterance in dialogue.utterances:
            if utterance.label is not None:
                counts[index[utterance.label]] += 1
    counts = counts.clamp(min=1)
    return (counts / counts.mean()) ** -power


def supervised_contrastive(features: torch.Tensor, labels: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """The supervised contrastive loss of Khosla et al. (2020), eq. 2 (L_out), over one batch.

    ``features`` (N, F) are L2-normalised; for each anchor i with at least one other utterance of its label,
    the loss is the mean over those positives p of ``-log softmax_a(z_i . z_a / temperature)[p]``, the softmax
    over every other utterance a of the batch. Returns the mean over such anchors, and 0 (attached to the
    graph) when no label occurs twice. It pulls utterances of one emotion together and pushes the others
    apart, which cross-entropy alone only does through the classifier's weights.
    """
    z = nn.functional.normalize(features, dim=-1)  # (N, F)
    self_pair = torch.eye(len(z), dtype=torch.bool, device=z.device)  # (N, N)
    similarity = (z @ z.T / temperature).masked_fill(self_pair, float("-inf"))  # (N, N)
    log_prob = similarity - similarity.logsumexp(1, keepdim=True)  # (N, N), -inf on the diagonal
    positive = (labels[:, None] == labels[None, :]) & ~self_pair  # (N, N)
    count = positive.sum(1)  # (N,)
    anchors = count > 0
    if not anchors.any():
        return features.sum() * 0
    per_anchor = log_prob.masked_fill(~positive, 0).sum(1)[anchors] / count[anchors]
    return -per_anchor.mean()
