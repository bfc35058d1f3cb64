"""Tests for rnnkit.erc.corpus: determinism, shape of the dialogues, label balance, and the speaker-history property."""

from collections import Counter

import pytest

from rnnkit.erc.corpus import BUILTIN_LABELS, SPLIT_SIZES, builtin_corpus
from rnnkit.erc.data import detect_format, label_set, read_split, write_corpus


def test_same_seed_same_corpus_other_seed_or_split_differs():
    assert builtin_corpus("dev", seed=3) == builtin_corpus("dev", seed=3)
    assert builtin_corpus("dev", seed=3) != builtin_corpus("dev", seed=4)
    assert [d.utterances for d in builtin_corpus("dev")] != [d.utterances for d in builtin_corpus("test")]


@pytest.mark.parametrize("split", ["train", "dev", "test"])
def test_sizes_speakers_and_lengths(split):
    dialogues = builtin_corpus(split)
    assert len(dialogues) == SPLIT_SIZES[split]
    assert len({d.id for d in dialogues}) == len(dialogues)
    for dialogue in dialogues:
        speakers = {u.speaker for u in dialogue.utterances}
        assert 2 <= len(speakers) <= 5 and 6 <= len(dialogue.utterances) <= 14
        assert all(u.label in BUILTIN_LABELS and u.text.strip() for u in dialogue.utterances)
        assert not any(name in u.text for name in speakers for u in dialogue.utterances)


def test_labels_are_roughly_balanced():
    counts = Counter(u.label for d in builtin_corpus("train") for u in d.utterances)
    shares = {label: counts[label] / sum(counts.values()) for label in BUILTIN_LABELS}
    assert all(0.12 < share < 0.28 for share in shares.values()), shares


def test_cue_words_reveal_the_mood_only_some_of_the_time():
    # An utterance whose exact text always carries one label is a revealing one; filler texts are shared by moods.
    train = [u for d in builtin_corpus("train") for u in d.utterances]
    labels_per_text = {}
    for u in train:
        labels_per_text.setdefault(u.text, set()).add(u.label)
    revealing = sum(len(labels_per_text[u.text]) == 1 for u in train) / len(train)
    assert 0.25 < revealing < 0.55, revealing


def test_a_speakers_previous_label_predicts_better_than_the_previous_utterance():
    by_speaker = by_order = total = 0
    for dialogue in builtin_corpus("test"):
        last_label_of = {}
        for i, u in enumerate(dialogue.utterances):
            if u.speaker in last_label_of:  # here both predictors have something to go on (i > 0 follows)
                total += 1
                by_speaker += last_label_of[u.speaker] == u.label
                by_order += dialogue.utterances[i - 1].label == u.label
            last_label_of[u.speaker] = u.label
    speaker_accuracy, order_accuracy = by_speaker / total, by_order / total
    assert speaker_accuracy > 0.8 and speaker_accuracy - order_accuracy > 0.25, (speaker_accuracy, order_accuracy)


def test_write_corpus_reads_back_as_jsonl(tmp_path):
    write_corpus(tmp_path, seed=1)
    assert detect_format(tmp_path) == "jsonl"
    train = read_split(tmp_path, "train")
    assert train == builtin_corpus("train", seed=1)
    assert label_set("jsonl", train) == sorted(BUILTIN_LABELS)
    assert read_split(tmp_path, "test") == builtin_corpus("test", seed=1)


def test_unknown_split():
    with pytest.raises(ValueError, match="split must be one of"):
        builtin_corpus("validation")
