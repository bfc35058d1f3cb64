"""ERCConfig validation, collate_dialogues, and ERCModel forward/backward and ablations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rnnkit.erc.data import DataError, Dialogue, Utterance
from rnnkit.erc.encoders import build_encoder
from rnnkit.erc.model import IGNORE_INDEX, DialogueBatch, ERCConfig, ERCModel, collate_dialogues

LABELS = {"anger": 0, "joy": 1, "neutral": 2}


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _dialogue(id, *turns):
    """turns: (speaker, text, label) triples."""
    return Dialogue(id, tuple(Utterance(*turn) for turn in turns))


DIALOGUES = [
    _dialogue("d1", ("Ann", "I can't believe it!", "joy"), ("Bob", "What now?", "neutral"),
              ("Ann", "We won!", "joy"), ("Cy", "Who cares.", "anger")),
    _dialogue("d2", ("Bob", "Stop that.", "anger"), ("Eve", "Fine.", None)),
]


def _config(**kw):
    return ERCConfig(**{"num_labels": 3, "embedding_dim": 6, "encoder_hidden": 4, "context_hidden": 5,
                        "speaker_hidden": 3, "dropout": 0.0} | kw)


def _model(**kw):
    config = _config(**kw)
    return ERCModel(config, build_encoder(config, DIALOGUES))


def test_collate_numbers_speakers_per_dialogue_and_masks_labels():
    model = _model()
    batch = collate_dialogues(DIALOGUES, model.encoder, LABELS)
    assert batch.speakers.tolist() == [[0, 1, 0, 2], [0, 1, -1, -1]]  # "Bob" is 1 in d1 and 0 in d2
    assert batch.lengths.tolist() == [4, 2]
    assert batch.labels.tolist() == [[1, 2, 1, 0], [0, IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX]]
    assert batch.inputs["tokens"].shape[:2] == (2, 4)
    unlabeled = collate_dialogues(DIALOGUES, model.encoder, None)
    assert bool((unlabeled.labels == IGNORE_INDEX).all())


def test_collate_errors():
    encoder = _model().encoder
    with pytest.raises(DataError, match=r"dialogue 'd1', utterance 1: unknown label 'neutral'"):
        collate_dialogues(DIALOGUES, encoder, {"anger": 0, "joy": 1})
    with pytest.raises(DataError, match="dialogue 'empty' has no utterances"):
        collate_dialogues([DIALOGUES[0], Dialogue("empty", ())], encoder, LABELS)
    with pytest.raises(ValueError, match="at least one dialogue"):
        collate_dialogues([], encoder, LABELS)


def test_batch_to_moves_every_tensor():
    batch = collate_dialogues(DIALOGUES, _model().encoder, LABELS).to("meta")
    tensors = [*batch.inputs.values(), batch.speakers, batch.lengths, batch.labels]
    assert isinstance(batch, DialogueBatch) and all(t.device.type == "meta" for t in tensors)


@pytest.mark.parametrize("use_context, use_speaker", [(True, True), (False, True), (True, False), (False, False)])
def test_forward_backward(use_context, use_speaker):
    model = _model(use_context=use_context, use_speaker=use_speaker)
    batch = collate_dialogues(DIALOGUES, model.encoder, LABELS)
    logits = model(batch)
    assert logits.shape == (2, 4, 3)
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch.labels.flatten(), ignore_index=IGNORE_INDEX)
    loss.backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and bool(param.grad.abs().sum() > 0), name


def test_ablation_switches_change_the_parameters():
    names = {key: {n.split(".")[0] for n, _ in _model(use_context=c, use_speaker=s).named_parameters()}
             for key, c, s in [("both", True, True), ("no_context", False, True), ("no_speaker", True, False)]}
    assert {"context", "fusion"} <= names["both"]
    assert names["no_context"] == names["both"] - {"context"}
    assert names["no_speaker"] == names["both"] - {"fusion"}
    # utterance width 2 * encoder_hidden = 8, context 2 * context_hidden = 10
    assert _model().classifier.in_features == 18
    assert _model(use_context=False).classifier.in_features == 8


def test_other_dialogues_in_the_batch_do_not_matter():
    model = _model(dropout=0.3).eval()
    together = model(collate_dialogues(DIALOGUES, model.encoder, LABELS))
    for b, dialogue in enumerate(DIALOGUES):
        alone = model(collate_dialogues([dialogue], model.encoder, LABELS))
        n = len(dialogue.utterances)
        torch.testing.assert_close(together[b, :n], alone[0, :n])


@pytest.mark.parametrize("use_speaker", [True, False])
def test_speaker_switch_decides_whether_speakers_matter(use_speaker):
    model = _model(use_speaker=use_speaker).eval()
    batch = collate_dialogues(DIALOGUES, model.encoder, LABELS)
    regrouped = DialogueBatch(batch.inputs, torch.zeros_like(batch.speakers), batch.lengths, batch.labels)
    assert torch.allclose(model(batch), model(regrouped)) != use_speaker


def test_features_encoder_feeds_the_model(tmp_path):
    np.save(tmp_path / "train.npy", np.random.default_rng(0).normal(size=(6, 7)).astype(np.float32))
    model = _model(encoder=f"features:{tmp_path}/{{split}}.npy")
    assert model.fusion.proj.in_features == 6 and model.fusion.proj.out_features == 7
    logits = model(collate_dialogues(DIALOGUES, model.encoder, LABELS))
    assert logits.shape == (2, 4, 3) and not any(True for _ in model.encoder.parameters())


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("num_labels", 0, r"ERCConfig.num_labels must be an int >= 1, got 0"),
        ("embedding_dim", True, r"ERCConfig.embedding_dim must be an int >= 1, got True"),
        ("num_layers", 1.5, r"ERCConfig.num_layers must be an int >= 1, got 1.5"),
        ("max_tokens", 0, r"ERCConfig.max_tokens must be None or an int >= 1, got 0"),
        ("dropout", 1.0, r"ERCConfig.dropout must be a number in \[0, 1\), got 1.0"),
        ("use_context", "yes", r"ERCConfig.use_context must be True or False, got 'yes'"),
        ("encoder", "word", r"ERCConfig.encoder must be 'words', .* got 'word' \(no such directory\)"),
        ("encoder", "features:", r"ERCConfig.encoder 'features:' needs a file"),
        ("encoder", 3, r"ERCConfig.encoder must be a string, got int"),
        ("cache_dir", 5, r"ERCConfig.cache_dir must be None or a path string, got 5"),
        ("finetune", True, r"ERCConfig.finetune needs a transformer encoder .* got encoder 'words'"),
        ("finetune", 1, r"ERCConfig.finetune must be True or False, got 1"),
        ("speaker_in_text", True, r"ERCConfig.speaker_in_text needs a transformer encoder .* got encoder 'words'"),
        ("encoder_lr", 0.0, r"ERCConfig.encoder_lr must be a finite number > 0, got 0.0"),
        ("encoder_lr_decay", 0.0, r"ERCConfig.encoder_lr_decay must be a number in \(0, 1\], got 0.0"),
        ("encoder_lr_decay", 1.5, r"ERCConfig.encoder_lr_decay must be a number in \(0, 1\], got 1.5"),
        ("encoder_lr_decay", True, r"ERCConfig.encoder_lr_decay must be a number in \(0, 1\], got True"),
        ("context_turns", -1, r"ERCConfig.context_turns must be an int >= 0, got -1"),
        ("context_turns", 2, r"ERCConfig.context_turns needs a transformer encoder .* got encoder 'words'"),
        ("encoder_layers", (2, 4), r"ERCConfig.encoder_layers needs a transformer encoder .* got encoder 'words'"),
        ("encoder_layers", [], r"ERCConfig.encoder_layers must be None or a non-empty list of ints, got \[\]"),
        ("encoder_layers", 4, r"ERCConfig.encoder_layers must be None or a non-empty list of ints, got 4"),
        ("encoder_layers", ["4"], r"ERCConfig.encoder_layers must be None or a non-empty list of ints, got \['4'\]"),
    ],
)
def test_config_validation_names_the_field(field, value, message):
    with pytest.raises(ValueError, match=message):
        ERCConfig(**{"num_labels": 3, field: value})


def test_config_dict_round_trip_rejects_unknown_keys(tmp_path):
    config = _config(encoder=str(tmp_path), use_speaker=False, max_tokens=20)
    assert ERCConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match=r"unknown ERCConfig field\(s\) 'hiden', 'lr'"):
        ERCConfig.from_dict(config.to_dict() | {"hiden": 3, "lr": 0.1})


# ---- fine-tuning the transformer encoder -------------------------------------------------------

def _step(model):
    """One AdamW step on the batch's cross-entropy, with the model's parameter groups."""
    optimizer = torch.optim.AdamW(model.param_groups(1e-2))
    batch = collate_dialogues(DIALOGUES, model.encoder, LABELS)
    logits = model(batch)  # (B, U, L)
    torch.nn.functional.cross_entropy(logits.reshape(-1, 3), batch.labels.reshape(-1)).backward()
    optimizer.step()
    return optimizer


def test_finetuning_trains_the_encoder_with_its_own_learning_rate():
    model = _model(encoder="minilm", finetune=True, encoder_lr=3e-5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = _step(model)
    assert [(g["name"], g["lr"]) for g in optimizer.param_groups] == [("head", 1e-2), ("encoder", 3e-5)]
    grouped = [id(p) for g in optimizer.param_groups for p in g["params"]]
    assert sorted(grouped) == sorted(id(p) for p in model.parameters())  # every parameter, once
    assert {id(p) for p in optimizer.param_groups[1]["params"]} == {id(p) for p in model.encoder.parameters()}
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert "encoder.backbone.embeddings.word_embeddings.weight" in changed
    assert "classifier.weight" in changed


def test_layerwise_decay_gives_each_depth_of_the_encoder_its_own_rate():
    model = _model(encoder="minilm", finetune=True, encoder_lr=4e-5, encoder_lr_decay=0.5)
    groups = model.param_groups(1e-2)
    L = model.encoder.backbone.config.num_hidden_layers
    assert [(g["name"], g["lr"]) for g in groups] == [("head", 1e-2)] + [
        (f"encoder.depth{k}", 4e-5 * 0.5 ** (L - k)) for k in range(L + 1)]
    grouped = [id(p) for g in groups for p in g["params"]]
    assert sorted(grouped) == sorted(id(p) for p in model.parameters())  # every parameter, once
    names = {id(p): name for name, p in model.encoder.backbone.named_parameters()}
    assert {names[id(p)].split(".")[0] for p in groups[1]["params"]} == {"embeddings"}
    for k in range(1, L + 1):
        assert {names[id(p)].split(".")[2] for p in groups[k + 1]["params"]} == {str(k - 1)}  # encoder.layer.{k-1}


def test_layerwise_decay_refuses_a_backbone_whose_layers_it_cannot_tell_apart():
    model = _model(encoder="minilm", finetune=True, encoder_lr_decay=0.8)
    L = model.encoder.backbone.config.num_hidden_layers
    model.encoder.backbone.adapters = torch.nn.ModuleList(torch.nn.Linear(2, 2) for _ in range(L))
    with pytest.raises(ValueError, match=rf"cannot tell its {L} transformer layers apart \(2 lists of {L} modules\)"):
        model.param_groups(1e-3)


def test_a_frozen_transformer_stays_frozen(tmp_path):
    model = _model(encoder="minilm", cache_dir=str(tmp_path))
    assert not any(k.startswith("encoder.") for k in model.state_dict())
    features = model.encoder.batch_inputs(DIALOGUES)["features"]
    optimizer = _step(model)
    assert len(optimizer.param_groups) == 1
    torch.testing.assert_close(model.encoder.batch_inputs(DIALOGUES)["features"], features, atol=0, rtol=0)
    torch.testing.assert_close(model.encoder.embed(["We won!"])[0], features[0, 2], atol=1e-6, rtol=1e-5)
