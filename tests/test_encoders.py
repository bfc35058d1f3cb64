"""Utterance encoders: shapes, masking, vocabulary, the transformer feature cache, features files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from rnnkit.erc.data import DataError, Dialogue, Utterance
from rnnkit.erc.encoders import (
    FeaturesEncoder,
    TokenEncoder,
    TrainableTransformerEncoder,
    TransformerEncoder,
    build_encoder,
    load_encoder,
    resolve_model_dir,
)
from rnnkit.erc.model import ERCConfig
from rnnkit.vocab import UNK


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _dialogue(id, *texts, speakers="AB"):
    return Dialogue(id, tuple(Utterance(speakers[i % len(speakers)], t, "joy") for i, t in enumerate(texts)))


TRAIN = [
    _dialogue("t1", "I love this song!", "Me too, it's great.", "Play it again."),
    _dialogue("t2", "Why are you late?"),
]


def _config(encoder="words", **kw):
    return ERCConfig(num_labels=3, encoder=encoder, embedding_dim=6, encoder_hidden=5, **kw)


@pytest.mark.parametrize("kind", ["words", "chars"])
def test_token_encoder_shapes_and_padding(kind):
    encoder = build_encoder(_config(kind), TRAIN)
    assert isinstance(encoder, TokenEncoder) and encoder.output_size == 10
    inputs = encoder.batch_inputs(TRAIN)
    tokens, lengths = inputs["tokens"], inputs["token_lengths"]
    assert tokens.shape[:2] == (2, 3) and lengths.shape == (2, 3)
    assert lengths[1, 1:].tolist() == [0, 0]  # padding utterances
    assert int(lengths[0, 2]) == len(encoder.tokenize("Play it again."))
    out = encoder(inputs)
    assert out.shape == (2, 3, 10)
    assert torch.equal(out[1, 1:], torch.zeros(2, 10))
    assert bool(out[0].abs().sum(-1).gt(0).all())


@pytest.mark.parametrize("kind", ["words", "chars"])
def test_padding_tokens_do_not_change_the_vector(kind):
    """An utterance encodes the same alone, next to a longer one, and with extra padding columns."""
    encoder = build_encoder(_config(kind), TRAIN)
    alone = encoder(encoder.batch_inputs([_dialogue("a", "Play it again.")]))[0, 0]
    batch = encoder.batch_inputs([_dialogue("b", "Play it again.", "I love this song, play it again and again!")])
    torch.testing.assert_close(encoder(batch)[0, 0], alone)
    widened = dict(batch, tokens=torch.nn.functional.pad(batch["tokens"], (0, 7)))
    torch.testing.assert_close(encoder(widened), encoder(batch))


def test_vocabulary_comes_from_train_only():
    encoder = build_encoder(_config("words", min_freq=1), TRAIN)
    tokens = encoder.batch_inputs([_dialogue("d", "love zebras")])["tokens"][0, 0]
    assert tokens[0] != UNK and tokens[1] == UNK
    frequent = build_encoder(_config("words", min_freq=2), TRAIN)
    assert "love" not in frequent.vocab and "." in frequent.vocab


def test_max_tokens_truncates():
    encoder = build_encoder(_config("chars", max_tokens=4), TRAIN)
    assert int(encoder.batch_inputs(TRAIN)["token_lengths"].max()) == 4


def test_token_encoder_save_and_load(tmp_path):
    config = _config("words")
    encoder = build_encoder(config, TRAIN)
    encoder.save(tmp_path / "run")  # a run directory that does not exist yet
    loaded = load_encoder(config, tmp_path / "run")
    assert loaded.vocab == encoder.vocab
    loaded.load_state_dict(encoder.state_dict())
    torch.testing.assert_close(loaded(loaded.batch_inputs(TRAIN)), encoder(encoder.batch_inputs(TRAIN)))
    with pytest.raises(FileNotFoundError, match="encoder.json does not exist"):
        load_encoder(config, tmp_path)


# ---- pretrained transformer -------------------------------------------------------------------

SENTENCES = [_dialogue("m1", "I am so happy today!", "This is awful."), _dialogue("m2", "Where is the station?")]


@pytest.fixture(scope="session")
def minilm(tmp_path_factory):
    """One MiniLM encoder for the session (loading it takes a few seconds), with its own cache dir."""
    encoder = TransformerEncoder("minilm", cache_dir=tmp_path_factory.mktemp("cache"))
    encoder.prepare(SENTENCES)
    return encoder


def _count_forwards(encoder):
    calls = []
    encoder._load()[1].register_forward_hook(lambda *args: calls.append(1))
    return calls


def test_minilm_vectors(minilm):
    features = minilm(minilm.batch_inputs(SENTENCES))
    assert features.shape == (2, 2, 384)
    torch.testing.assert_close(features[0].norm(dim=-1), torch.ones(2))  # L2-normalised
    assert torch.equal(features[1, 1], torch.zeros(384))  # padding
    assert not torch.allclose(features[0, 0], features[0, 1])


def test_minilm_padding_in_a_batch_does_not_change_a_sentence(minilm):
    short = "Hi."
    alone = minilm.embed([short])
    together = minilm.embed([short, "A much longer sentence that makes the batch pad the short one a lot."])
    torch.testing.assert_close(together[:1], alone, atol=1e-5, rtol=1e-4)


def test_minilm_cache_is_read_back_without_running_the_model(minilm):
    calls = _count_forwards(minilm)
    first = minilm.batch_inputs(SENTENCES)["features"]
    assert calls == []  # prepared by the fixture: served from memory
    fresh = TransformerEncoder("minilm", cache_dir=minilm.cache_path.parent)
    assert minilm.cache_path.is_file()
    torch.testing.assert_close(fresh.batch_inputs(SENTENCES)["features"], first)
    assert fresh._backbone is None  # every text came from the cache file: the model was never loaded
    new = [_dialogue("m3", "A sentence nobody has embedded yet.")]
    minilm.batch_inputs(new)
    assert len(calls) == 1
    torch.testing.assert_close(minilm.batch_inputs(new)["features"][0, 0], minilm.embed([new[0].utterances[0].text])[0])
    assert len(calls) == 2  # the second batch_inputs hit the cache; only embed() ran the model


def test_minilm_max_tokens_truncates_and_keys_the_cache(minilm):
    """max_tokens=4 keeps [CLS], two word pieces and [SEP]: the vector of the first two words."""
    short = TransformerEncoder("minilm", cache_dir=minilm.cache_path.parent, max_tokens=4)
    dialogue = [_dialogue("m4", "I am so happy today!")]
    torch.testing.assert_close(short.batch_inputs(dialogue)["features"][0, 0], minilm.embed(["I am"])[0],
                               atol=1e-5, rtol=1e-4)
    assert short._keys(dialogue)[0] != minilm._keys(dialogue)[0]  # never served the untruncated vector
    assert not torch.allclose(minilm.batch_inputs(dialogue)["features"][0, 0], minilm.embed(["I am"])[0])


def test_model_directory_path_is_the_same_model(minilm):
    by_path = TransformerEncoder(str(resolve_model_dir("minilm")), cache_dir=minilm.cache_path.parent)
    assert by_path.identity == minilm.identity and by_path.output_size == 384


def test_minilm_layers_average_those_layers(minilm):
    """layers=(0, 4, -1): the mean over the tokens and over the embeddings, layer 4 and the last layer."""
    layered = TransformerEncoder("minilm", cache_dir=minilm.cache_path.parent, layers=(0, 4, -1))
    last = TransformerEncoder("minilm", cache_dir=minilm.cache_path.parent, layers=(-1,))
    assert layered.output_size == 384 and len({layered.identity, last.identity, minilm.identity}) == 3
    text = "I am so happy today!"
    tokenizer, model, _ = layered._load()
    with torch.no_grad():
        states = model(**tokenizer([text], return_tensors="pt"), output_hidden_states=True).hidden_states
    expected = sum(states[k][0].mean(0) for k in (0, 4, 6)) / 3  # (384,)
    got = layered.batch_inputs([_dialogue("m5", text)])["features"][0, 0]
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(torch.nn.functional.normalize(last.embed([text])[0], dim=0), minilm.embed([text])[0],
                               atol=1e-5, rtol=1e-4)  # the last layer alone is the model's vector before L2
    fresh = TransformerEncoder("minilm", cache_dir=minilm.cache_path.parent, layers=(0, 4, -1))
    torch.testing.assert_close(fresh.batch_inputs([_dialogue("m5", text)])["features"][0, 0], got)
    assert fresh._backbone is None  # read back from its cache


def test_layers_that_the_model_lacks_are_named(minilm):
    with pytest.raises(ValueError, match=r"encoder layer 7 does not exist in .* \(6 layers: 0 is the embeddings"):
        TransformerEncoder("minilm", cache_dir=minilm.cache_path.parent, layers=(2, 7))
    with pytest.raises(ValueError, match=r"encoder layer -8 does not exist"):
        TrainableTransformerEncoder("minilm", layers=(-8,))


def test_load_encoder_rejects_a_different_model(minilm, tmp_path):
    config = ERCConfig(num_labels=3, encoder="minilm", cache_dir=str(minilm.cache_path.parent))
    minilm.save(tmp_path)
    assert load_encoder(config, tmp_path).identity == minilm.identity
    saved = json.loads((tmp_path / "encoder.json").read_text())
    (tmp_path / "encoder.json").write_text(json.dumps(saved | {"identity": "0" * 32}))
    with pytest.raises(ValueError, match="differs from the one the run"):
        load_encoder(config, tmp_path)


def test_not_a_model_directory(tmp_path):
    with pytest.raises(ValueError, match="not a Hugging Face model directory"):
        resolve_model_dir(str(tmp_path))


# ---- fine-tuned transformer ------------------------------------------------------------------

@pytest.fixture(scope="module")
def trainable():
    return TrainableTransformerEncoder("minilm")


def test_trainable_encoder_starts_from_the_frozen_vectors(minilm, trainable):
    trainable.eval()
    inputs = trainable.batch_inputs(SENTENCES)
    assert inputs["input_ids"].shape[:2] == inputs["attention_mask"].shape[:2] == (2, 2)
    assert not inputs["attention_mask"][1, 1].any()  # padding utterance
    torch.testing.assert_close(trainable(inputs), minilm(minilm.batch_inputs(SENTENCES)), atol=1e-5, rtol=1e-4)
    assert trainable.identity == minilm.identity


def test_trainable_encoder_with_layers_starts_from_the_frozen_layered_vectors(minilm):
    frozen = TransformerEncoder("minilm", cache_dir=minilm.cache_path.parent, layers=(3, -1))
    trainable = TrainableTransformerEncoder("minilm", layers=(3, -1)).eval()
    assert trainable.output_size == frozen.output_size == 384 and trainable.identity == frozen.identity
    torch.testing.assert_close(trainable(trainable.batch_inputs(SENTENCES)), frozen(frozen.batch_inputs(SENTENCES)),
                               atol=1e-5, rtol=1e-4)


def test_trainable_encoder_chunks_by_length_without_changing_the_vectors(trainable, monkeypatch):
    """Utterances are encoded in length-sorted chunks; chunk boundaries must not move any vector."""
    trainable.eval()
    dialogues = TRAIN + SENTENCES
    inputs = trainable.batch_inputs(dialogues)
    whole = trainable(inputs)  # (4, 3, 384): one chunk
    monkeypatch.setattr(trainable, "chunk_size", 2)
    torch.testing.assert_close(trainable(inputs), whole, atol=1e-5, rtol=1e-4)
    assert torch.equal(whole[1, 1:], torch.zeros(2, 384))


def test_trainable_encoder_passes_gradients_and_caches_nothing(trainable, tmp_path, monkeypatch):
    monkeypatch.setenv("RNNKIT_CACHE", str(tmp_path))
    encoder = build_encoder(ERCConfig(num_labels=3, encoder="minilm", finetune=True), SENTENCES)
    assert isinstance(encoder, TrainableTransformerEncoder)
    encoder.train()
    out = encoder(encoder.batch_inputs(SENTENCES))  # (2, 2, 384)
    out[:, :, 0].sum().backward()
    grads = [p.grad for p in encoder.parameters()]
    assert all(g is not None for g in grads) and all(bool(g.abs().sum() > 0) for g in grads[-4:])
    assert any(name.startswith("backbone.") for name in encoder.state_dict())
    assert list(tmp_path.iterdir()) == []


def test_trainable_encoder_counts_and_truncates_tokens(trainable):
    dialogue = SENTENCES[0]
    mask = trainable.batch_inputs([dialogue])["attention_mask"]
    assert trainable.num_tokens(dialogue) == int(mask.sum())
    short = TrainableTransformerEncoder("minilm", max_tokens=4)
    assert short.batch_inputs(SENTENCES)["input_ids"].shape[-1] == 4
    assert short.num_tokens(dialogue) == 8  # two utterances, four tokens each


def test_speaker_in_text_prefixes_the_name(minilm, trainable):
    named = TrainableTransformerEncoder("minilm", speaker_in_text=True)
    ids = named.batch_inputs(SENTENCES)["input_ids"][0, 1]
    assert named.tokenizer.decode(ids, skip_special_tokens=True) == "b : this is awful."
    frozen = TransformerEncoder("minilm", cache_dir=minilm.cache_path.parent, speaker_in_text=True)
    vectors = frozen.batch_inputs(SENTENCES)["features"]  # (2, 2, 384)
    torch.testing.assert_close(vectors[0, 1], minilm.embed(["B: This is awful."])[0])
    assert not torch.allclose(vectors[0, 1], minilm.batch_inputs(SENTENCES)["features"][0, 1])


def test_readings_give_each_utterance_its_previous_turns_most_recent_first():
    encoder = TransformerEncoder("minilm", cache_dir="unused", context_turns=2)
    texts, contexts = encoder.readings(TRAIN)
    assert texts == ["I love this song!", "Me too, it's great.", "Play it again.", "Why are you late?"]
    assert contexts == ["", "I love this song!", "Me too, it's great. | I love this song!", ""]
    encoder.speaker_in_text = True
    assert encoder.readings(TRAIN)[1][2] == "B: Me too, it's great. | A: I love this song!"
    assert TransformerEncoder("minilm", cache_dir="unused").readings(TRAIN)[1] is None


def test_context_is_read_as_a_second_segment_but_not_pooled(minilm, trainable):
    reader = TrainableTransformerEncoder("minilm", context_turns=1)
    reader.eval()
    inputs = reader.batch_inputs(SENTENCES)
    alone = trainable.batch_inputs(SENTENCES)
    # The pooled tokens are exactly the tokens of the utterance read alone: [CLS] text [SEP].
    for b, u in [(0, 0), (0, 1), (1, 0)]:
        n = int(inputs["pool_lengths"][b, u])
        assert n == int(alone["attention_mask"][b, u].sum())
        assert torch.equal(inputs["input_ids"][b, u, :n], alone["input_ids"][b, u, :n])
    second = inputs["input_ids"][0, 1][inputs["token_type_ids"][0, 1].bool()]
    assert reader.tokenizer.decode(second, skip_special_tokens=True) == "i am so happy today!"
    assert reader.num_tokens(SENTENCES[0]) == int(inputs["attention_mask"][0].sum())
    vectors = reader(inputs)  # (2, 2, 384)
    assert not torch.allclose(vectors[0, 1], trainable(alone)[0, 1], atol=1e-3)  # the context changes it
    # The frozen encoder reads the same pairs (its cache keeps them apart from the texts read alone).
    frozen = TransformerEncoder("minilm", cache_dir=minilm.cache_path.parent, context_turns=1)
    torch.testing.assert_close(frozen.batch_inputs(SENTENCES)["features"], vectors, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(minilm.batch_inputs(SENTENCES)["features"], trainable(alone), atol=1e-5, rtol=1e-4)


def test_context_is_cut_before_the_utterance():
    reader = TrainableTransformerEncoder("minilm", max_tokens=8, context_turns=1)
    long = _dialogue("l", "one two three four five six seven eight nine ten", "eleven twelve", "thirteen")
    inputs = reader.batch_inputs([long])
    assert inputs["input_ids"].shape[-1] == 8
    # The long first utterance keeps what fits beside the three special tokens of a pair (its context is "");
    # the second keeps itself whole and as much of its context as fits.
    assert reader.tokenizer.decode(inputs["input_ids"][0, 0]) == "[CLS] one two three four five [SEP] [SEP]"
    assert reader.tokenizer.decode(inputs["input_ids"][0, 1]) == "[CLS] eleven twelve [SEP] one two three [SEP]"
    assert inputs["pool_lengths"][0].tolist() == [7, 4, 3]


def test_trainable_encoder_save_and_load(trainable, tmp_path):
    config = ERCConfig(num_labels=3, encoder="minilm", finetune=True)
    trainable.save(tmp_path)
    loaded = load_encoder(config, tmp_path)
    assert isinstance(loaded, TrainableTransformerEncoder) and loaded.identity == trainable.identity
    saved = json.loads((tmp_path / "encoder.json").read_text())
    (tmp_path / "encoder.json").write_text(json.dumps(saved | {"identity": "0" * 32}))
    with pytest.raises(ValueError, match="differs from the one the run"):
        load_encoder(config, tmp_path)


# ---- precomputed features ---------------------------------------------------------------------

DEV = [_dialogue("d1", "a", "b"), _dialogue("d2", "c", "d", "e")]


def _write(path, rows, width=4, offset=0):
    table = np.arange(offset, offset + rows * width, dtype=np.float32).reshape(rows, width)
    if path.suffix == ".pt":
        torch.save(torch.from_numpy(table), path)
    else:
        np.save(path, table)
    return torch.from_numpy(table)


@pytest.mark.parametrize("suffix", [".npy", ".pt"])
def test_features_rows_follow_reading_order(tmp_path, suffix):
    train = _write(tmp_path / f"train{suffix}", 4)
    dev = _write(tmp_path / f"dev{suffix}", 5, offset=100)
    config = _config(f"features:{tmp_path}/{{split}}{suffix}")
    encoder = build_encoder(config, TRAIN)
    assert encoder.output_size == 4
    torch.testing.assert_close(encoder(encoder.batch_inputs(TRAIN))[0], train[:3])
    encoder.prepare(DEV, "dev")
    features = encoder(encoder.batch_inputs(DEV))  # (2, 3, 4)
    torch.testing.assert_close(features[0, :2], dev[:2])
    torch.testing.assert_close(features[1], dev[2:])
    assert torch.equal(features[0, 2], torch.zeros(4))
    encoder.save(tmp_path)
    assert load_encoder(config, tmp_path).output_size == 4


def test_features_errors_name_the_file(tmp_path):
    _write(tmp_path / "train.npy", 4)
    encoder = build_encoder(_config(f"features:{tmp_path}/{{split}}.npy"), TRAIN)
    _write(tmp_path / "dev.npy", 6)
    with pytest.raises(DataError, match=r"dev\.npy: expected 5 rows .* got 6"):
        encoder.prepare(DEV, "dev")
    _write(tmp_path / "dev.npy", 5, width=3)
    with pytest.raises(DataError, match=r"dev\.npy: expected 4 columns .* got 3"):
        encoder.prepare(DEV, "dev")
    with pytest.raises(DataError, match=r"test\.npy: features file for the test split does not exist"):
        encoder.prepare(DEV, "test")
    with pytest.raises(DataError, match="dialogue 'd1' has no features"):
        encoder.batch_inputs(DEV)
    np.save(tmp_path / "dev.npy", np.zeros((5, 2, 2), dtype=np.float32))
    with pytest.raises(DataError, match=r"dev\.npy: features must be a 2-D float array"):
        encoder.prepare(DEV, "dev")
    table = np.zeros((5, 4), dtype=np.float32)
    table[3, 2] = np.nan
    np.save(tmp_path / "dev.npy", table)
    with pytest.raises(DataError, match=r"dev\.npy\[3, 2\] \(dialogue 'd2', utterance #2\): nan is not a finite "
                                        r"number"):
        encoder.prepare(DEV, "dev")
    table[3, 2], table[4, 0] = 0, -np.inf
    np.save(tmp_path / "dev.npy", table)
    with pytest.raises(DataError, match=r"dev\.npy\[4, 0\] \(dialogue 'd2', utterance #3\): -inf is not"):
        encoder.prepare(DEV, "dev")
    (tmp_path / "dev.npy").write_bytes(b"not numpy")
    with pytest.raises(DataError, match=r"dev\.npy: cannot read features"):
        encoder.prepare(DEV, "dev")
    with pytest.raises(ValueError, match=r"x\.csv' must end in \.npy or \.pt"):
        FeaturesEncoder(str(tmp_path / "x.csv"))
    with pytest.raises(ValueError, match="needs the split name"):
        encoder.prepare(DEV)
