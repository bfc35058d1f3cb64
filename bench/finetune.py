"""Where the time of one fine-tuning step goes: transformer encoder, recurrent head, optimizer.

    python bench/finetune.py [--data ../shared/data/meld] [--batches 12] [--speaker-in-text] [--context-turns N]

Builds the model ``rnnkit train --encoder minilm --finetune`` trains (same defaults) and times, on the
same training batches (dialogues in file order, cut by ``--batch-size`` and ``--token-budget`` as the
trainer cuts them):

- encoder forward, and encoder forward + backward (a fixed random projection of its output as the loss);
- the head (``ERCModel.classify``: speaker fusion, context BiLSTM, classifier) forward, and forward +
  backward, on the encoder's output held fixed;
- the AdamW step over all parameters;
- the whole training step (forward, backward, clipping, step), as the trainer runs it.

Each phase is timed over all batches in turn, after one warm-up pass, and reported per 1,000 utterances,
so the parts can be compared with the whole (their sum differs from it by what the phases share).
Runs on the built-in corpus when the data directory does not exist.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from rnnkit.batching import budget_batches
from rnnkit.erc import (
    IGNORE_INDEX,
    ERCConfig,
    ERCModel,
    build_encoder,
    builtin_corpus,
    collate_dialogues,
    erc_loss,
    label_set,
    read_split,
)


def timed(fn, count: int) -> float:
    """Seconds of ``fn(i)`` for every batch index ``i < count``, after one untimed call of ``fn(0)``."""
    fn(0)
    start = time.perf_counter()
    for i in range(count):
        fn(i)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "meld"))
    parser.add_argument("--encoder", default="minilm")
    parser.add_argument("--batches", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--token-budget", type=int, default=2048)
    parser.add_argument("--speaker-in-text", action="store_true")
    parser.add_argument("--context-turns", type=int, default=0)
    args = parser.parse_args()

    torch.manual_seed(0)
    data = Path(args.data)
    corpus = "meld" if data.is_dir() else "builtin"
    train = read_split(data, "train") if data.is_dir() else builtin_corpus("train")
    labels = label_set(corpus, train)
    config = ERCConfig(num_labels=len(labels), encoder=args.encoder, finetune=True,
                       speaker_in_text=args.speaker_in_text, context_turns=args.context_turns)
    encoder = build_encoder(config, train)
    model = ERCModel(config, encoder).train()
    optimizer = torch.optim.AdamW(model.param_groups(1e-3), fused=True)  # as rnnkit's Trainer builds it on CPU
    index = {label: i for i, label in enumerate(labels)}

    cuts = budget_batches(range(len(train)), [encoder.num_tokens(d) for d in train], args.token_budget,
                          args.batch_size)[: args.batches]
    batches = [collate_dialogues([train[i] for i in cut], encoder, index) for cut in cuts]
    utterances = sum(int(b.lengths.sum()) for b in batches)
    tokens = sum(int(b.inputs["attention_mask"].sum()) for b in batches)
    outputs = [encoder(b.inputs).detach() for b in batches]  # (B, U, D) each
    probe = torch.randn(encoder.output_size)

    def encoder_forward(i):
        with torch.no_grad():
            encoder(batches[i].inputs)

    def encoder_backward(i):
        (encoder(batches[i].inputs) @ probe).sum().backward()

    def head(i, backward):
        logits = model.classify(outputs[i].requires_grad_(), batches[i])  # (B, U, L)
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), batches[i].labels.flatten(),
                                                 ignore_index=IGNORE_INDEX)
        if backward:
            loss.backward()

    def step(_):
        optimizer.step()

    def whole(i):
        optimizer.zero_grad()
        erc_loss(model, batches[i]).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()

    phases = {
        "encoder forward": encoder_forward,
        "encoder forward + backward": encoder_backward,
        "head forward": lambda i: head(i, False),
        "head forward + backward": lambda i: head(i, True),
        "optimizer step": step,
        "whole training step": whole,
    }
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {len(batches)} batches, {utterances} "
          f"utterances, {tokens} tokens ({tokens / utterances:.1f} per utterance), {corpus} train, encoder "
          f"{args.encoder}")
    print(f"{'phase':32s} {'s / 1000 utt':>13s} {'utt / s':>9s}")
    for name, fn in phases.items():
        seconds = timed(fn, len(batches))
        print(f"{name:32s} {seconds / utterances * 1000:13.2f} {utterances / seconds:9.1f}")


if __name__ == "__main__":
    main()
