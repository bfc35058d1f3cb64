"""Losses for ERC training beyond cross-entropy.

Shapes: N utterances, F feature width.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["supervised_contrastive"]


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
