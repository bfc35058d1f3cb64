import doctest
import json
import os
from collections import Counter

import pytest
import torch

import rnnkit.vocab
from rnnkit.vocab import PAD, PAD_TOKEN, UNK, UNK_TOKEN, Vocab, char_tokenize, whitespace_tokenize, word_tokenize

TEXTS = [["the", "cat", "sat"], ["the", "dog", "sat", "down"], ["the", "end"]]


def test_specials_have_fixed_ids():
    vocab = Vocab(["a", "b"])
    assert (PAD, UNK) == (0, 1)
    assert vocab.token_to_id(PAD_TOKEN) == PAD and vocab.token_to_id(UNK_TOKEN) == UNK
    assert vocab.id_to_token(PAD) == PAD_TOKEN and vocab.id_to_token(UNK) == UNK_TOKEN
    assert vocab.tokens == [PAD_TOKEN, UNK_TOKEN, "a", "b"]
    assert len(vocab) == 4


def test_build_orders_by_frequency_then_token():
    vocab = Vocab.build(TEXTS)
    counts = Counter(token for text in TEXTS for token in text)
    expected = sorted(counts, key=lambda t: (-counts[t], t))
    assert vocab.tokens[2:] == expected
    assert vocab.tokens[2:4] == ["the", "sat"]  # 3 and 2 occurrences
    # Tokens that tie keep alphabetical order whatever order the data lists them in.
    assert Vocab.build(list(reversed(TEXTS))) == vocab


def test_build_min_freq_and_max_size():
    assert Vocab.build(TEXTS, min_freq=2).tokens[2:] == ["the", "sat"]
    assert Vocab.build(TEXTS, max_size=1).tokens[2:] == ["the"]
    assert len(Vocab.build(TEXTS, max_size=0)) == 2
    assert len(Vocab.build(TEXTS, min_freq=4)) == 2


def test_build_empty_and_specials_in_data():
    empty = Vocab.build([])
    assert len(empty) == 2 and empty.encode(["x"]) == [UNK]
    assert Vocab.build([[]]) == empty
    # Special tokens in the data are not counted a second time.
    assert Vocab.build([[PAD_TOKEN, UNK_TOKEN, "x"]]).tokens == [PAD_TOKEN, UNK_TOKEN, "x"]


def test_build_accepts_a_generator():
    assert Vocab.build(text for text in TEXTS) == Vocab.build(TEXTS)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"min_freq": 0}, "min_freq must be an int >= 1, got 0"),
        ({"min_freq": 1.5}, "min_freq must be an int >= 1, got 1.5"),
        ({"max_size": -1}, "max_size must be None or an int >= 0, got -1"),
        ({"max_size": True}, "max_size must be None or an int >= 0, got True"),
    ],
)
def test_build_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=f"^{message}$"):
        Vocab.build(TEXTS, **kwargs)


def test_build_rejects_untokenised_text():
    with pytest.raises(ValueError, match=r"^token_lists\[1\] must be a list of tokens, got a str; tokenise it first$"):
        Vocab.build([["a"], "a sentence"])
    with pytest.raises(ValueError, match="^token_lists must be an iterable of token lists, got a str$"):
        Vocab.build("abc")


def test_encode_decode_round_trip_with_unknowns():
    vocab = Vocab.build(TEXTS)
    ids = vocab.encode(["the", "bird", "sat"])
    assert ids == [vocab.token_to_id("the"), UNK, vocab.token_to_id("sat")]
    assert vocab.decode(ids) == ["the", UNK_TOKEN, "sat"]
    assert vocab.decode(vocab.encode(TEXTS[1])) == TEXTS[1]
    assert vocab.token_to_id("bird") == UNK


def test_decode_skips_padding_unless_asked():
    vocab = Vocab(["a"])
    ids = torch.tensor([2, 0, 0])
    assert vocab.decode(ids) == ["a"]
    assert vocab.decode(ids, skip_pad=False) == ["a", PAD_TOKEN, PAD_TOKEN]


def test_contains():
    vocab = Vocab(["a"])
    assert "a" in vocab and PAD_TOKEN in vocab and "b" not in vocab


def test_bad_ids_and_tokens():
    vocab = Vocab(["a"])
    with pytest.raises(ValueError, match="^id 3 is out of range for a vocabulary of size 3$"):
        vocab.decode([2, 3])
    with pytest.raises(ValueError, match="^id -1 is out of range for a vocabulary of size 3$"):
        vocab.id_to_token(-1)
    with pytest.raises(ValueError, match="^encode expects a list of tokens, got a str; tokenise it first$"):
        vocab.encode("a")
    with pytest.raises(ValueError, match="^vocabulary tokens must be unique, got 'a' more than once$"):
        Vocab(["a", "b", "a"])
    with pytest.raises(ValueError, match="^vocabulary tokens must be unique, got '<pad>' more than once$"):
        Vocab([PAD_TOKEN])
    with pytest.raises(ValueError, match="^vocabulary tokens must be str, got int 3$"):
        Vocab(["a", 3])


def test_save_load_round_trip(tmp_path):
    vocab = Vocab.build(TEXTS + [["déjà", "vu", "let's"]])
    path = tmp_path / "vocab.json"
    vocab.save(path)
    loaded = Vocab.load(str(path))
    assert loaded == vocab
    assert loaded.encode(["déjà", "zzz"]) == vocab.encode(["déjà", "zzz"])
    assert json.loads(path.read_text(encoding="utf-8"))["tokens"] == vocab.tokens
    assert [p.name for p in tmp_path.iterdir()] == ["vocab.json"]  # no temporary file left behind


def test_save_replaces_an_existing_file(tmp_path):
    path = tmp_path / "vocab.json"
    Vocab(["a", "b", "c"]).save(path)
    Vocab(["z"]).save(path)
    assert Vocab.load(path) == Vocab(["z"])


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "is not valid JSON"),
        ('["<pad>", "<unk>"]', "must hold an object with a 'tokens' list of strings"),
        ('{"tokens": ["<pad>", "<unk>", 3]}', "must hold an object with a 'tokens' list of strings"),
        ('{"tokens": ["<unk>", "<pad>", "a"]}', r"must start with \['<pad>', '<unk>'\]"),
        ('{"tokens": ["<pad>", "<unk>", "a", "a"]}', "vocabulary tokens must be unique"),
    ],
)
def test_load_errors_name_the_file(tmp_path, content, message):
    path = tmp_path / "broken.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ValueError, match=message) as info:
        Vocab.load(path)
    assert str(path) in str(info.value)


def test_load_missing_file(tmp_path):
    path = tmp_path / "missing.json"
    with pytest.raises(FileNotFoundError, match="missing.json"):
        Vocab.load(path)


def test_whitespace_tokenize():
    assert whitespace_tokenize("  Hi,\tyou\nthere! ") == ["Hi,", "you", "there!"]
    assert whitespace_tokenize("") == []


def test_char_tokenize():
    assert char_tokenize("ab c") == ["a", "b", " ", "c"]
    assert char_tokenize("") == []


@pytest.mark.parametrize(
    "text, tokens",
    [
        ("Hello, World!", ["hello", ",", "world", "!"]),
        ("You must’ve had your hands full.", ["you", "must've", "had", "your", "hands", "full", "."]),
        ("Let‘s go", ["let's", "go"]),
        ("don't STOP", ["don't", "stop"]),
        ("'cause dogs'", ["'", "cause", "dogs", "'"]),
        ("Wait... what?!", ["wait", "...", "what", "?", "!"]),
        ("It costs 3.50, or 1,000 in the 90s", ["it", "costs", "3.50", ",", "or", "1,000", "in", "the", "90s"]),
        ("KL-5 to GR-6", ["kl", "-", "5", "to", "gr", "-", "6"]),
        ("Café…", ["café", "…"]),
        ("", []),
    ],
)
def test_word_tokenize(text, tokens):
    assert word_tokenize(text) == tokens


def test_word_tokenize_keeps_every_non_space_character():
    text = "Oh my God!! Ross… you’re “ON A BREAK”? 12.5% of $3,000 — #1 (really)"
    tokens = word_tokenize(text)
    expected = text.lower().replace("’", "'")
    assert "".join(tokens) == "".join(expected.split())
    assert all(token and not any(ch.isspace() for ch in token) for token in tokens)


def test_docstring_examples():
    results = doctest.testmod(rnnkit.vocab)
    assert results.attempted > 0 and results.failed == 0


def test_save_gives_the_mode_of_a_plain_open_and_leaves_no_temporary(tmp_path):
    old = os.umask(0o022)
    try:
        Vocab.build([["a", "b"]]).save(tmp_path / "vocab.json")
    finally:
        os.umask(old)
    assert [(p.name, p.stat().st_mode & 0o777) for p in tmp_path.iterdir()] == [("vocab.json", 0o644)]
