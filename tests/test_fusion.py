"""SpeakerHistoryFusion against a per-dialogue, per-speaker loop over torch.nn.LSTM."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rnnkit.erc.fusion import SpeakerHistoryFusion

# Any integers may name speakers, including negative and very large ones.
SPEAKER_IDS = [0, 1, -3, 7, 2**40, -(2**35), 12, 99, 5]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _batch(lengths, D, num_speakers=len(SPEAKER_IDS)):
    """Random (B, U, D) utterances, (B, U) speaker ids (dialogue 0 uses as many as fit), lengths."""
    B, U = len(lengths), max(lengths)
    x = torch.randn(B, U, D, dtype=torch.float64, requires_grad=True)
    pool = torch.tensor(SPEAKER_IDS[:num_speakers])
    speakers = pool[torch.randint(num_speakers, (B, U))]
    k = min(U, num_speakers)
    speakers[0, :k] = pool[:k]
    return x, speakers, torch.tensor(lengths)


def _reference(x, speakers, lengths, lstm, proj):
    """The definition: run ``lstm`` over each speaker's own utterances of each dialogue alone."""
    out = x.clone()
    for b in range(x.shape[0]):
        n = int(lengths[b])
        for s in speakers[b, :n].unique():
            where = (speakers[b, :n] == s).nonzero().squeeze(1)  # this speaker's turns, in order
            history, _ = lstm(x[b, where][None])  # (1, turns, dirs*H)
            out[b, where] = x[b, where] + proj(history[0])
    return out


def _pair(D, H, num_layers, bidirectional):
    """A fusion and a torch.nn.LSTM holding the same weights (loaded through the state_dict)."""
    fusion = SpeakerHistoryFusion(D, H, num_layers=num_layers, bidirectional=bidirectional).double()
    lstm = nn.LSTM(D, H, num_layers, batch_first=True, bidirectional=bidirectional).double()
    fusion.rnn.load_state_dict(lstm.state_dict())
    return fusion, lstm


@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("D, H", [(6, 3), (5, 4)])  # (6, 3) bidirectional is the identity case
def test_matches_per_speaker_loop(bidirectional, num_layers, D, H):
    fusion, lstm = _pair(D, H, num_layers, bidirectional)
    identity = H * (2 if bidirectional else 1) == D
    assert isinstance(fusion.proj, nn.Identity) == identity
    x, speakers, lengths = _batch([14, 3, 0, 9, 1, 11], D)

    got = fusion(x, speakers, lengths)
    want = _reference(x, speakers, lengths, lstm, fusion.proj)
    torch.testing.assert_close(got, want)

    upstream = torch.randn_like(got)
    got_grads = torch.autograd.grad(got, [x, *fusion.rnn.parameters()], upstream)
    want_grads = torch.autograd.grad(want, [x, *lstm.parameters()], upstream, allow_unused=True)
    for g, w in zip(got_grads, want_grads):
        torch.testing.assert_close(g, w)
    if not identity:
        got_proj = torch.autograd.grad(fusion(x, speakers, lengths), list(fusion.proj.parameters()), upstream)
        want_proj = torch.autograd.grad(_reference(x, speakers, lengths, lstm, fusion.proj),
                                        list(fusion.proj.parameters()), upstream)
        for g, w in zip(got_proj, want_proj):
            torch.testing.assert_close(g, w)


def test_padding_positions_returned_unchanged():
    fusion = SpeakerHistoryFusion(4, 3).double()
    x, speakers, lengths = _batch([6, 2, 4], 4)
    speakers[1, 2:] = 12345  # garbage ids in the padding must not matter
    out = fusion(x, speakers, lengths)
    pad = torch.arange(6)[None, :] >= lengths[:, None]  # (B, U)
    assert torch.equal(out[pad], x[pad])
    assert not torch.allclose(out[~pad], x[~pad])
    (grad,) = torch.autograd.grad(out.sum(), x)
    assert torch.equal(grad[pad], torch.ones_like(grad[pad]))


def test_speakers_do_not_leak_across_dialogues():
    """The same id in two dialogues names two different people: batching must not join them."""
    fusion = SpeakerHistoryFusion(4, 2).double()
    x, _, lengths = _batch([5, 5], 4)
    speakers = torch.zeros(2, 5, dtype=torch.long)
    together = fusion(x, speakers, lengths)
    for b in range(2):
        alone = fusion(x[b : b + 1], speakers[b : b + 1], lengths[b : b + 1])
        torch.testing.assert_close(together[b], alone[0])


def test_relabelling_speakers_changes_nothing():
    fusion = SpeakerHistoryFusion(4, 2, bidirectional=False).double()
    x, speakers, lengths = _batch([8, 6], 4, num_speakers=4)
    relabelled = speakers * -1000 + 2**50
    torch.testing.assert_close(fusion(x, speakers, lengths), fusion(x, relabelled, lengths))


def test_all_padding_batch_is_returned_as_is():
    fusion = SpeakerHistoryFusion(4, 2)
    x = torch.randn(2, 3, 4)
    assert torch.equal(fusion(x, torch.zeros(2, 3, dtype=torch.long), torch.tensor([0, 0])), x)


@pytest.mark.parametrize(
    "x, speakers, lengths, message",
    [
        (torch.randn(2, 3), torch.zeros(2, 3, dtype=torch.long), [3, 3], r"\(B, U, D\) tensor, got \(2, 3\)"),
        (torch.zeros(2, 3, 4, dtype=torch.long), torch.zeros(2, 3, dtype=torch.long), [3, 3], "floating point"),
        (torch.randn(2, 3, 5), torch.zeros(2, 3, dtype=torch.long), [3, 3], "width 5 .* input_size=4"),
        (torch.randn(2, 3, 4), torch.zeros(2, 4, dtype=torch.long), [3, 3], r"speakers must be a \(B, U\)"),
        (torch.randn(2, 3, 4), torch.zeros(2, 3), [3, 3], "speakers must be an integer tensor"),
        (torch.randn(2, 3, 4), torch.zeros(2, 3, dtype=torch.long), [3, 4], "lengths must be <= the padded"),
        (torch.randn(2, 3, 4), torch.zeros(2, 3, dtype=torch.long), [3], "lengths has 1 entries"),
    ],
)
def test_bad_inputs_are_named(x, speakers, lengths, message):
    with pytest.raises(ValueError, match=message):
        SpeakerHistoryFusion(4, 2)(x, speakers, lengths)
