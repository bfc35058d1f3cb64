"""Dialogue data: the records ERC code works on, and readers for the corpora it is measured on.

A :class:`Dialogue` is an ordered tuple of :class:`Utterance` s, each with its speaker, its text and, when annotated,
its emotion label (both defined in :mod:`rnnkit.erc.records`). The readers (:mod:`rnnkit.erc._readers`, called
by :func:`read_split`, :func:`read_file` and :func:`iter_file` here) turn four on-disk layouts into that one form and
check the input at the boundary: every problem is a :class:`DataError` whose message names the file, the 1-based line
in that file and the field, so nothing further down (vocabularies, batching, training) has to guess what went wrong.

Formats, each as ``read_split(directory, split)`` finds it (``split`` is "train", "dev" or "test"):

meld
    ``{split}_sent_emo.csv`` with columns Utterance, Speaker, Emotion, Dialogue_ID, Utterance_ID (others ignored).
    A dialogue is one Dialogue_ID, its utterances ordered by Utterance_ID (Poria et al., ACL 2019).
emorynlp
    ``emorynlp_{split}_final.csv`` with columns Utterance, Speaker, Emotion, Scene_ID, Utterance_ID, Season, Episode.
    Speaker is a list literal such as ``['Monica Geller']`` (several names are joined with ", "). A dialogue is one
    (Season, Episode, Scene_ID), ordered by Utterance_ID (Zahiri and Choi, 2018).
dailydialog
    ``{part}/dialogues_{part}.txt`` + ``{part}/dialogues_emotion_{part}.txt`` with part "train", "validation"
    (= dev) or "test", or the same files directly in ``directory``. One dialogue a line, each utterance ended by
    ``__eou__``, one emotion id per utterance (0 no emotion, 1 anger, 2 disgust, 3 fear, 4 happiness, 5 sadness,
    6 surprise); the two speakers alternate and are called "A" and "B" (Li et al., IJCNLP 2017). The unsplit
    ``dialogues_text.txt`` + ``dialogues_emotion.txt`` are recognised, but hold no split: read them with read_file.
jsonl
    ``{split}.jsonl``, one dialogue per line (blank lines are skipped)::

        {"id": "d1", "utterances": [{"speaker": "Ann", "text": "Hi!", "label": "joy"},
                                    {"speaker": "Bob", "text": "Hello.", "label": "neutral"}]}

    "id" is optional (default: the line number as a string) and must be unique; "label" is optional (absent or
    null = unlabeled). The label set is the sorted set of labels seen in the train split.
builtin
    the synthetic corpus of :mod:`rnnkit.erc.corpus`; no files (``directory`` is ignored); :func:`write_corpus`
    writes it out in the jsonl format.

MELD and EmoryNLP use weighted F1 over all classes; DailyDialog, where "no emotion" is most of the data, is scored by
micro F1 over the other classes.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from rnnkit.erc._readers import FIXED_LABELS, emotion_file, iter_jsonl, read_dailydialog, read_jsonl, read_table
from rnnkit.erc.corpus import BUILTIN_LABELS, builtin_corpus
from rnnkit.erc.records import DataError, Dialogue, Utterance, data_error

__all__ = [
    "Utterance", "Dialogue", "DataError", "FORMATS", "SPLITS", "detect_format", "resolve_format", "split_file",
    "read_split", "read_file", "iter_file", "write_jsonl", "write_corpus", "check_labels", "label_set",
    "neutral_label", "metric_name",
]

FORMATS = ("meld", "emorynlp", "dailydialog", "jsonl", "builtin")
SPLITS = ("train", "dev", "test")

_NEUTRAL = {"meld": "neutral", "emorynlp": "Neutral", "dailydialog": "no emotion", "jsonl": "neutral",
            "builtin": "neutral"}
_DAILYDIALOG_PART = {"train": "train", "dev": "validation", "test": "test"}


def _check_format(format: str, allowed=FORMATS) -> str:
    if format not in allowed:
        raise ValueError(f"format must be one of {', '.join(map(repr, allowed))}, got {format!r}")
    return format


def _split_files(directory: Path, format: str, split: str) -> list[Path]:
    """Where ``split`` of ``format`` may live, in order of preference (text file first for dailydialog)."""
    if format == "meld":
        return [directory / f"{split}_sent_emo.csv"]
    if format == "emorynlp":
        return [directory / f"emorynlp_{split}_final.csv"]
    if format == "jsonl":
        return [directory / f"{split}.jsonl"]
    part = _DAILYDIALOG_PART[split]
    return [directory / part / f"dialogues_{part}.txt", directory / f"dialogues_{part}.txt"]


def detect_format(directory) -> str:
    """Name the format of the dataset in ``directory`` from the split files it holds."""
    directory = Path(directory)
    if not directory.is_dir():
        raise DataError(f"{directory}: not a directory")
    found = [fmt for fmt in ("meld", "emorynlp", "jsonl", "dailydialog")
             if any(path.is_file() for split in SPLITS for path in _split_files(directory, fmt, split))]
    if not found and (directory / "dialogues_text.txt").is_file():
        found = ["dailydialog"]
    if len(found) > 1:
        raise DataError(f"{directory}: holds files of several formats ({', '.join(found)}); pass format=")
    if not found:
        raise DataError(
            f"{directory}: no dataset found; looked for {{train,dev,test}}_sent_emo.csv (meld), "
            "emorynlp_{train,dev,test}_final.csv (emorynlp), {train,dev,test}.jsonl (jsonl), "
            "{train,validation,test}/dialogues_{train,validation,test}.txt or dialogues_text.txt (dailydialog)")
    return found[0]


def resolve_format(directory, format: str | None) -> str:
    """The format to read ``directory`` with: ``format`` as given, "builtin" without a directory, else detected
    from the files in ``directory``. A directory with format "builtin" is refused: the built-in corpus reads no
    files, and a run would record a directory it never read."""
    if format is None:
        return "builtin" if directory is None else detect_format(directory)
    if format != "builtin" and directory is None:
        raise DataError(f"format {format!r} is read from a dataset directory, and none was given")
    if format == "builtin" and directory is not None:
        raise DataError(f"{directory}: format 'builtin' is the built-in corpus and reads no directory; "
                        "drop the directory or name its format")
    return _check_format(format)


def split_file(directory, split: str, format: str) -> Path:
    """The file that holds ``split`` of the dataset in ``directory`` in ``format`` (not "builtin"); a
    :class:`DataError` naming the places looked at when there is none."""
    directory = Path(directory)
    candidates = _split_files(directory, format, split)
    path = next((p for p in candidates if p.is_file()), None)
    if path is None:
        unsplit = format == "dailydialog" and (directory / "dialogues_text.txt").is_file()
        hint = " (dialogues_text.txt holds no split: read it with read_file)" if unsplit else ""
        raise DataError(f"{directory}: missing {split} split file for format {format!r}; "
                        f"looked for {' and '.join(map(str, candidates))}{hint}")
    return path


def read_split(directory, split: str, format: str | None = None) -> list[Dialogue]:
    """Read one split ("train", "dev" or "test") of the dataset in ``directory`` (detected when ``format`` is None).

    Labels are required where the format has a fixed label set (an Emotion column, a DailyDialog emotion file); a
    split file that holds no dialogues is an error, as nothing could be trained or scored on it.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of 'train', 'dev', 'test', got {split!r}")
    if format == "builtin":
        return builtin_corpus(split)
    format = detect_format(directory) if format is None else _check_format(format)
    path = split_file(directory, split, format)
    if format == "jsonl":
        dialogues = read_jsonl(path)
    elif format == "dailydialog":
        emotions = emotion_file(path)
        if not emotions.is_file():
            raise data_error(emotions, f"missing emotion file for the {split} split")
        dialogues = read_dailydialog(path, emotions)
    else:
        dialogues = read_table(path, format, require_labels=True)
    if not dialogues:
        raise data_error(path, f"the {split} split holds no dialogues")
    return dialogues


def read_file(path, format: str | None = None) -> list[Dialogue]:
    """Read one file: a .jsonl, a MELD or EmoryNLP .csv, or a DailyDialog dialogues_*.txt.

    Unlike read_split, labels may be absent (prediction input): a CSV without an Emotion column, or a DailyDialog text
    file without its emotion file beside it, gives utterances labeled None. Without ``format`` the file name decides,
    and for a .csv its header (a Scene_ID column means EmoryNLP).
    """
    return list(iter_file(path, format))


def iter_file(path, format: str | None = None) -> Iterator[Dialogue]:
    """The dialogues of :func:`read_file`, one at a time: a .jsonl file is read line by line as the iterator
    advances, so that labeling a file larger than memory holds one dialogue of it (a bad line is a DataError
    when it is reached). A CSV or DailyDialog file is read whole first: a dialogue of a CSV file may be spread over
    the whole file, and a DailyDialog dialogue's labels are in a second file."""
    path = Path(path)
    if format is not None:
        _check_format(format, ("meld", "emorynlp", "dailydialog", "jsonl"))
    elif path.suffix == ".jsonl":
        format = "jsonl"
    elif path.suffix == ".txt" and path.name.startswith("dialogues_"):
        format = "dailydialog"
    elif path.suffix != ".csv":
        raise data_error(path, "cannot tell the format; expected a .jsonl file, a MELD or EmoryNLP .csv file "
                               "or a DailyDialog dialogues_*.txt file (or pass format=)")
    if format == "jsonl":
        return iter_jsonl(path)
    if format == "dailydialog":
        emotions = emotion_file(path)
        return iter(read_dailydialog(path, emotions if emotions.is_file() else None))
    return iter(read_table(path, format, require_labels=False))


def write_jsonl(path, dialogues) -> None:
    """Write dialogues in the jsonl format above (unlabeled utterances get no "label" key)."""
    with open(path, "w", encoding="utf-8") as f:
        for dialogue in dialogues:
            utterances = [{"speaker": u.speaker, "text": u.text} | ({} if u.label is None else {"label": u.label})
                          for u in dialogue.utterances]
            f.write(json.dumps({"id": dialogue.id, "utterances": utterances}, ensure_ascii=False) + "\n")


def write_corpus(directory, seed: int = 0) -> None:
    """Write the built-in corpus as train.jsonl, dev.jsonl and test.jsonl in ``directory`` (created if missing)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        write_jsonl(directory / f"{split}.jsonl", builtin_corpus(split, seed))


def check_labels(dialogues, labels: list[str] | None, source) -> None:
    """DataError naming ``source`` when no utterance of ``dialogues`` carries a label (nothing to train on or to
    score), or naming the dialogue and the utterance of the first label outside ``labels`` (None: any label), as
    in the dev or test split of a dataset holding a label its train split, and so the run, does not know.

    ``source`` is the split's file (its line is named for a jsonl file) or a description ("built-in corpus").
    """
    if not any(u.label is not None for dialogue in dialogues for u in dialogue.utterances):
        raise DataError(f"{source}: no utterance carries a label; training and scoring need labeled utterances "
                        "in the train, dev and test splits")
    if labels is None:
        return
    known = set(labels)
    for index, dialogue in enumerate(dialogues):
        for k, utterance in enumerate(dialogue.utterances):
            if utterance.label is not None and utterance.label not in known:
                problem = f"unknown label {utterance.label!r}; the run's labels are {', '.join(labels)}"
                if isinstance(source, Path) and source.suffix == ".jsonl":
                    raise data_error(source, problem, line=_jsonl_line(source, index),
                                     field=f"utterances[{k}].label")
                raise DataError(f"{source}: dialogue {dialogue.id!r}, utterances[{k}], field 'label': {problem}")


def _jsonl_line(path: Path, index: int) -> int:
    """The 1-based line of the ``index``-th dialogue of a jsonl file, which holds one per non-blank line."""
    lines = path.read_text(encoding="utf-8-sig").split("\n")
    return [number for number, line in enumerate(lines, start=1) if line.strip()][index]


def label_set(format: str, train_dialogues) -> list[str]:
    """The class labels, in class-index order: fixed per corpus, or the sorted labels seen in train for jsonl."""
    _check_format(format)
    if format == "builtin":
        return list(BUILTIN_LABELS)
    if format in FIXED_LABELS:
        return list(FIXED_LABELS[format])
    labels = sorted({u.label for d in train_dialogues for u in d.utterances if u.label is not None})
    if not labels:
        raise DataError("jsonl train dialogues carry no labels; a label set needs at least one labeled utterance")
    return labels


def neutral_label(format: str) -> str:
    """The label that means "no emotion" in ``format`` (left out of micro_f1_no_neutral)."""
    return _NEUTRAL[_check_format(format)]


def metric_name(format: str) -> str:
    """The figure of merit usually reported for ``format``."""
    return "micro_f1_no_neutral" if _check_format(format) == "dailydialog" else "weighted_f1"
