import doctest
import functools
import random

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
from torch.utils.data import DataLoader

import rnnkit.batching
from rnnkit.batching import (
    Batch,
    BucketBatchSampler,
    budget_batches,
    collate,
    last_valid,
    lengths_to_mask,
    mask_to_lengths,
    pad_sequences,
)


def random_lengths(n, low=1, high=60, seed=0):
    rng = random.Random(seed)
    return [rng.randint(low, high) for _ in range(n)]


# pad_sequences


def test_pad_sequences_lists_of_ints():
    padded, lengths = pad_sequences([[1, 2, 3], [4], []])
    assert padded.dtype == torch.long and lengths.dtype == torch.long
    assert padded.tolist() == [[1, 2, 3], [4, 0, 0], [0, 0, 0]]
    assert lengths.tolist() == [3, 1, 0]


def test_pad_sequences_padding_value_and_time_major():
    seqs = [[5, 6], [7, 8, 9]]
    batch_major, lengths = pad_sequences(seqs, padding_value=-1)
    time_major, lengths_tm = pad_sequences(seqs, batch_first=False, padding_value=-1)
    assert batch_major.tolist() == [[5, 6, -1], [7, 8, 9]]
    assert torch.equal(time_major, batch_major.T)
    assert torch.equal(lengths, lengths_tm)


def test_pad_sequences_tensors_with_features():
    generator = torch.Generator().manual_seed(0)
    seqs = [torch.randn(n, 4, generator=generator) for n in (3, 5, 1)]
    padded, lengths = pad_sequences(seqs)
    assert padded.shape == (3, 5, 4) and lengths.tolist() == [3, 5, 1]
    for b, seq in enumerate(seqs):
        assert torch.equal(padded[b, : len(seq)], seq)
        assert torch.all(padded[b, len(seq) :] == 0)


@pytest.mark.parametrize(
    "seqs, message",
    [
        ([], "seqs must hold at least one sequence"),
        ("abc", "seqs must be a list of sequences, got str"),
        (torch.zeros(2, 3), "seqs must be a list of sequences, got Tensor"),
        ([torch.tensor(3)], r"seqs\[0\] must be a sequence, got a scalar"),
        (
            [torch.zeros(2, 3), torch.zeros(2, 4)],
            r"seqs\[1\] has trailing shape \(4,\) and dtype torch.float32, but seqs\[0\] has \(3,\) and torch.float32",
        ),
        (
            [torch.zeros(2), torch.zeros(2, dtype=torch.long)],
            r"seqs\[1\] has trailing shape \(\) and dtype torch.int64, but seqs\[0\] has \(\) and torch.float32",
        ),
    ],
)
def test_pad_sequences_errors(seqs, message):
    with pytest.raises(ValueError, match=f"^{message}$"):
        pad_sequences(seqs)


# masks


def test_lengths_to_mask_matches_loop():
    lengths = [3, 0, 5, 1]
    mask = lengths_to_mask(torch.tensor(lengths))
    assert mask.dtype == torch.bool and mask.shape == (4, 5)
    assert mask.tolist() == [[t < n for t in range(5)] for n in lengths]
    assert lengths_to_mask(lengths, max_len=7).shape == (4, 7)
    assert lengths_to_mask([]).shape == (0, 0)


@pytest.mark.parametrize(
    "lengths, max_len, message",
    [
        ([1, 4], 3, "lengths must be <= the padded length 3, got 4"),
        ([1, -1], None, "lengths must be >= 0, got -1"),
        ([1.0, 2.0], None, "lengths must be an integer tensor, got dtype torch.float32"),
        ([[1, 2]], None, r"lengths must be 1-D, got shape \(1, 2\)"),
        ([1, 2], -1, "max_len must be None or an int >= 0, got -1"),
    ],
)
def test_lengths_to_mask_errors(lengths, max_len, message):
    with pytest.raises(ValueError, match=f"^{message}$"):
        lengths_to_mask(lengths, max_len)


def test_mask_to_lengths_round_trip():
    lengths = torch.tensor(random_lengths(20, low=0, high=9))
    mask = lengths_to_mask(lengths, max_len=12)
    assert torch.equal(mask_to_lengths(mask), lengths)
    assert mask_to_lengths(mask).dtype == torch.long
    assert torch.equal(mask_to_lengths(mask.long()), lengths)  # 0/1 attention masks too


@pytest.mark.parametrize(
    "mask, message",
    [
        (torch.tensor([[1, 1, 0], [1, 0, 1]]), "mask row 1 is not a prefix mask: its True steps must come first, then only False"),
        (torch.tensor([[False, True]]), "mask row 0 is not a prefix mask: its True steps must come first, then only False"),
        (torch.tensor([1, 0]), r"mask must be a 2-D \(B, T\) tensor, got \(2,\)"),
        ([[1, 0]], r"mask must be a 2-D \(B, T\) tensor, got list"),
        (torch.tensor([[2, 0]]), "mask must be bool or hold only 0 and 1, got dtype torch.int64"),
        (torch.tensor([[1.0, 0.0]]), "mask must be bool or hold only 0 and 1, got dtype torch.float32"),
    ],
)
def test_mask_to_lengths_errors(mask, message):
    with pytest.raises(ValueError, match=f"^{message}$"):
        mask_to_lengths(mask)


# collate


def test_collate_pairs():
    batch = collate([([5, 8, 2], 1), ([7], 0), ([3, 3], 2)])
    assert isinstance(batch, Batch)
    assert batch.ids.tolist() == [[5, 8, 2], [7, 0, 0], [3, 3, 0]]
    assert batch.lengths.tolist() == [3, 1, 2]
    assert batch.labels.tolist() == [1, 0, 2] and batch.labels.dtype == torch.long


def test_collate_dicts_tensor_labels_and_padding_value():
    samples = [
        {"token_ids": torch.tensor([4, 5]), "label": torch.tensor([0.5, 1.0])},
        {"token_ids": torch.tensor([6]), "label": torch.tensor([0.0, 2.0])},
    ]
    ids, lengths, labels = functools.partial(collate, padding_value=9)(samples)
    assert ids.tolist() == [[4, 5], [6, 9]] and lengths.tolist() == [2, 1]
    assert labels.tolist() == [[0.5, 1.0], [0.0, 2.0]]


def test_collate_unlabelled_dicts():
    batch = collate([{"token_ids": [1, 2]}, {"token_ids": [3]}])
    assert batch.labels is None and batch.ids.tolist() == [[1, 2], [3, 0]]


@pytest.mark.parametrize(
    "samples, message",
    [
        ([], "collate needs at least one sample"),
        ([{"ids": [1]}], r"sample 0 is a dict without a 'token_ids' key; keys: \['ids'\]"),
        ([([1], 0), ([1], 0, 5)], "sample 1 must be a \\(token_ids, label\\) pair or a dict, got tuple"),
        (
            [{"token_ids": [1], "label": 0}, {"token_ids": [1]}],
            "samples must all have a label or all lack one, but sample 0 and sample 1 differ",
        ),
    ],
)
def test_collate_errors(samples, message):
    with pytest.raises(ValueError, match=f"^{message}$"):
        collate(samples)


# BucketBatchSampler


def padding_of(batches, lengths):
    return sum(max(lengths[i] for i in batch) * len(batch) - sum(lengths[i] for i in batch) for batch in batches)


@pytest.mark.parametrize("n, batch_size, multiplier", [(1, 4, 50), (97, 8, 3), (100, 10, 1), (64, 16, 50)])
@pytest.mark.parametrize("shuffle", [True, False])
def test_bucket_sampler_covers_each_index_once(n, batch_size, multiplier, shuffle):
    sampler = BucketBatchSampler(random_lengths(n), batch_size, shuffle=shuffle, bucket_size_multiplier=multiplier)
    batches = list(sampler)
    assert sorted(i for batch in batches for i in batch) == list(range(n))
    assert len(batches) == len(sampler) == -(-n // batch_size)
    assert sum(len(batch) < batch_size for batch in batches) <= 1
    assert all(0 < len(batch) <= batch_size for batch in batches)


def test_bucket_sampler_drop_last():
    sampler = BucketBatchSampler(random_lengths(97), 8, drop_last=True, bucket_size_multiplier=3)
    for epoch in range(3):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert len(batches) == len(sampler) == 12
        assert all(len(batch) == 8 for batch in batches)
        flat = [i for batch in batches for i in batch]
        assert len(set(flat)) == len(flat) == 96
    assert list(BucketBatchSampler(random_lengths(5), 8, drop_last=True)) == []
    assert len(BucketBatchSampler(random_lengths(5), 8, drop_last=True)) == 0


def test_bucket_sampler_pads_less_than_random_batches():
    lengths = random_lengths(2000, seed=3)
    bucketed = padding_of(list(BucketBatchSampler(lengths, 32, seed=0)), lengths)
    order = list(range(len(lengths)))
    random.Random(0).shuffle(order)
    random_batches = [order[i : i + 32] for i in range(0, len(order), 32)]
    assert bucketed < padding_of(random_batches, lengths) / 5


def test_bucket_sampler_batches_are_sorted_runs_within_buckets():
    lengths = random_lengths(300, seed=1)
    batches = list(BucketBatchSampler(lengths, 10, shuffle=False, bucket_size_multiplier=5))
    # Without shuffling, bucket k holds indices 50k .. 50k + 49 in length order.
    for k in range(6):
        bucket = [i for batch in batches[5 * k : 5 * k + 5] for i in batch]
        assert sorted(bucket) == list(range(50 * k, 50 * k + 50))
        assert [lengths[i] for i in bucket] == sorted(lengths[i] for i in bucket)


def test_bucket_sampler_is_deterministic_per_seed_and_epoch():
    lengths = random_lengths(200)

    def batches(seed, epoch):
        sampler = BucketBatchSampler(lengths, 8, seed=seed, bucket_size_multiplier=4)
        sampler.set_epoch(epoch)
        return list(sampler)

    assert batches(0, 0) == batches(0, 0)
    assert batches(0, 0) != batches(1, 0)
    assert batches(0, 1) != batches(0, 0)
    sampler = BucketBatchSampler(lengths, 8, seed=0, bucket_size_multiplier=4)
    assert list(sampler) == list(sampler) == batches(0, 0)  # iterating again does not reshuffle
    sampler.set_epoch(1)
    assert list(sampler) == batches(0, 1)


def test_bucket_sampler_without_shuffle_ignores_epoch():
    sampler = BucketBatchSampler(random_lengths(50), 4, shuffle=False)
    first = list(sampler)
    sampler.set_epoch(5)
    assert list(sampler) == first


def test_bucket_sampler_with_dataloader():
    texts = [[t + 1 for t in range(n)] for n in random_lengths(40, high=12)]
    dataset = [(ids, n % 3) for n, ids in enumerate(texts)]
    sampler = BucketBatchSampler([len(ids) for ids in texts], 6, seed=2)
    seen = []
    for ids, lengths, labels in DataLoader(dataset, batch_sampler=sampler, collate_fn=collate):
        assert ids.shape == (len(lengths), int(lengths.max()))
        assert torch.equal(ids != 0, lengths_to_mask(lengths))
        seen.extend(labels.tolist())
    assert sorted(seen) == sorted(n % 3 for n in range(40))


def test_bucket_sampler_empty_and_tensor_lengths():
    assert list(BucketBatchSampler([], 4)) == [] and len(BucketBatchSampler([], 4)) == 0
    as_list = list(BucketBatchSampler(random_lengths(30), 4, seed=7))
    assert list(BucketBatchSampler(torch.tensor(random_lengths(30)), 4, seed=7)) == as_list


@pytest.mark.parametrize(
    "args, kwargs, message",
    [
        (([3, 4], 0), {}, "batch_size must be an int >= 1, got 0"),
        (([3, 4], 2.0), {}, "batch_size must be an int >= 1, got 2.0"),
        (([3, 4], 2), {"bucket_size_multiplier": 0}, "bucket_size_multiplier must be an int >= 1, got 0"),
        (([3, 4], 2), {"seed": None}, "seed must be an int, got None"),
        (([3, -4], 2), {}, "lengths must be >= 0, got -4"),
        ((torch.ones(2, 2, dtype=torch.long), 2), {}, r"lengths must be 1-D, got shape \(2, 2\)"),
    ],
)
def test_bucket_sampler_errors(args, kwargs, message):
    with pytest.raises(ValueError, match=f"^{message}$"):
        BucketBatchSampler(*args, **kwargs)


def test_set_epoch_rejects_non_int():
    with pytest.raises(ValueError, match="^epoch must be an int, got '1'$"):
        BucketBatchSampler([1, 2], 1).set_epoch("1")


# last_valid


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("feature_shape", [(), (3,), (2, 4)])
def test_last_valid_matches_loop(batch_first, feature_shape):
    generator = torch.Generator().manual_seed(0)
    lengths = [4, 1, 7, 3]
    output = torch.randn(4, 7, *feature_shape, generator=generator)  # (B, T, *)
    if not batch_first:
        output = output.transpose(0, 1).contiguous()  # (T, B, *)
    picked = last_valid(output, torch.tensor(lengths), batch_first=batch_first)
    expected = torch.stack(
        [output[b, n - 1] if batch_first else output[n - 1, b] for b, n in enumerate(lengths)]
    )
    assert picked.shape == (4, *feature_shape)
    assert torch.equal(picked, expected)


def test_last_valid_gradient_reaches_only_last_steps():
    output = torch.randn(3, 5, 2, requires_grad=True)
    last_valid(output, [2, 5, 1]).sum().backward()
    expected = torch.zeros(3, 5, 2)
    for b, n in enumerate([2, 5, 1]):
        expected[b, n - 1] = 1
    assert torch.equal(output.grad, expected)


def test_last_valid_equals_final_hidden_state_of_packed_lstm():
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(3, 4, batch_first=True)
    lengths = torch.tensor([5, 2, 4])
    x = torch.randn(3, 5, 3)
    packed_out, (h_n, _) = lstm(pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False))
    output, _ = pad_packed_sequence(packed_out, batch_first=True)
    torch.testing.assert_close(last_valid(output, lengths), h_n[-1])


@pytest.mark.parametrize(
    "output, lengths, message",
    [
        (torch.zeros(3, 4), [2, 0, 1], "sequence 1 has length 0, so it has no last valid output"),
        (torch.zeros(3, 4), [2, 5, 1], "lengths must be <= the padded length 4, got 5"),
        (torch.zeros(3, 4), [2, 1], "lengths has 2 entries but the batch has 3 sequences"),
        (torch.zeros(3), [1, 1, 1], r"output must be a tensor with at least 2 dims \(batch and time\), got \(3,\)"),
    ],
)
def test_last_valid_errors(output, lengths, message):
    with pytest.raises(ValueError, match=f"^{message}$"):
        last_valid(output, lengths)


def test_docstring_examples():
    results = doctest.testmod(rnnkit.batching)
    assert results.attempted > 0 and results.failed == 0


def test_budget_batches_respect_the_budget_and_cover_every_item_once():
    assert budget_batches([3, 0, 2, 1], [5, 2, 4, 6], 8, 4) == [[3], [0], [2, 1]]
    g = torch.Generator().manual_seed(0)
    sizes = torch.randint(1, 12, (200,), generator=g).tolist()
    order = torch.randperm(200, generator=g).tolist()
    batches = budget_batches(order, sizes + [30], 20, 5) + budget_batches([200], sizes + [30], 20, 5)
    assert [i for b in batches for i in b] == order + [200]
    for batch in batches:
        assert len(batch) <= 5
        assert sum((sizes + [30])[i] for i in batch) <= 20 or len(batch) == 1  # only a lone item may exceed it
