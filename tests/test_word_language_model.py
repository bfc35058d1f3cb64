"""A word-level language model written the way pytorch/examples' ``word_language_model`` writes it, trained
a few steps with torch's recurrent modules and with rnnkit's in their place.

The model takes its recurrent classes from a namespace (``getattr(nn_module, rnn_type)``, ``nn_module.RNN``
with a nonlinearity), calls ``flatten_parameters``, builds its state with ``init_hidden`` and detaches it
between batches with ``repackage_hidden``, and ties the decoder to the embedding: the code that meets
rnnkit's classes is the example's, unchanged. From the same weights and seed, the native backend gives
torch's losses bit for bit (it runs torch's kernels); the equations backend the same losses up to float32
rounding.
"""

from __future__ import annotations

from functools import partial
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import rnnkit

NTOKEN, NINP, NLAYERS, BSZ, BPTT, STEPS = 40, 16, 2, 4, 6, 5
RNN_TYPES = ["LSTM", "GRU", "RNN_TANH", "RNN_RELU"]


class RNNModel(nn.Module):
    """Embedding -> dropout -> recurrent stack -> dropout -> decoder tied to the embedding."""

    def __init__(self, nn_module, rnn_type, ntoken, ninp, nhid, nlayers, dropout=0.2):
        super().__init__()
        self.ntoken = ntoken
        self.drop = nn.Dropout(dropout)
        self.encoder = nn.Embedding(ntoken, ninp)
        if rnn_type in ("LSTM", "GRU"):
            self.rnn = getattr(nn_module, rnn_type)(ninp, nhid, nlayers, dropout=dropout)
        else:
            nonlinearity = {"RNN_TANH": "tanh", "RNN_RELU": "relu"}[rnn_type]
            self.rnn = nn_module.RNN(ninp, nhid, nlayers, nonlinearity=nonlinearity, dropout=dropout)
        self.decoder = nn.Linear(nhid, ntoken)
        self.decoder.weight = self.encoder.weight  # tied: nhid == ninp
        self.rnn_type, self.nhid, self.nlayers = rnn_type, nhid, nlayers
        initrange = 0.1
        nn.init.uniform_(self.encoder.weight, -initrange, initrange)
        nn.init.zeros_(self.decoder.bias)

    def forward(self, input, hidden):
        emb = self.drop(self.encoder(input))  # (T, B, ninp)
        output, hidden = self.rnn(emb, hidden)  # (T, B, nhid)
        decoded = self.decoder(self.drop(output)).view(-1, self.ntoken)  # (T * B, ntoken)
        return F.log_softmax(decoded, dim=1), hidden

    def init_hidden(self, bsz):
        weight = next(self.parameters())
        if self.rnn_type == "LSTM":
            return (weight.new_zeros(self.nlayers, bsz, self.nhid), weight.new_zeros(self.nlayers, bsz, self.nhid))
        return weight.new_zeros(self.nlayers, bsz, self.nhid)


def repackage_hidden(h):
    """The state's values without their history, in the container they came in."""
    if isinstance(h, torch.Tensor):
        return h.detach()
    return type(h)(repackage_hidden(v) for v in h)


def _train(model, data, lr=2.0, clip=0.25):
    """STEPS steps of truncated backpropagation through time over ``data`` (L, BSZ); the losses, then the
    evaluation loss over all of ``data`` (in eval mode)."""
    torch.manual_seed(7)  # the dropout masks
    model.rnn.flatten_parameters()
    model.train()
    hidden, losses = model.init_hidden(BSZ), []
    for i in range(0, STEPS * BPTT, BPTT):
        source, targets = data[i : i + BPTT], data[i + 1 : i + 1 + BPTT].reshape(-1)
        model.zero_grad()
        hidden = repackage_hidden(hidden)
        output, hidden = model(source, hidden)
        loss = F.nll_loss(output, targets)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        for p in model.parameters():
            p.data.add_(p.grad, alpha=-lr)
        losses.append(loss.item())
    model.eval()
    with torch.no_grad():
        output, _ = model(data[:-1], model.init_hidden(BSZ))
        losses.append(F.nll_loss(output, data[1:].reshape(-1)).item())
    return losses


@pytest.mark.parametrize("rnn_type", RNN_TYPES)
@pytest.mark.parametrize("backend", ["native", "equations"])
def test_training_losses_are_torchs(rnn_type, backend):
    data = torch.randint(NTOKEN, (STEPS * BPTT + 1, BSZ))  # random tokens, batchified (L, BSZ)
    reference = RNNModel(nn, rnn_type, NTOKEN, NINP, NINP, NLAYERS)
    namespace = SimpleNamespace(**{name: partial(getattr(rnnkit, name), backend=backend)
                                   for name in ("LSTM", "GRU", "RNN")})
    ours = RNNModel(namespace, rnn_type, NTOKEN, NINP, NINP, NLAYERS)
    assert type(ours.rnn) is {"LSTM": rnnkit.LSTM, "GRU": rnnkit.GRU}.get(rnn_type, rnnkit.RNN)
    ours.load_state_dict(reference.state_dict(), strict=True)
    assert ours.decoder.weight is ours.encoder.weight

    expected, got = _train(reference, data), _train(ours, data)
    assert expected[-1] < expected[0]  # it learns something
    if backend == "native":
        assert got == expected
        for (name, mine), torchs in zip(ours.state_dict().items(), reference.state_dict().values()):
            assert torch.equal(mine, torchs), name
    else:
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
