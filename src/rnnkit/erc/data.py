"""Dialogue data: the records ERC code works on, and readers for the corpora it is measured on.

A :class:`Dialogue` is an ordered tuple of :class:`Utterance` s, each with its speaker, its text and, when annotated,
its emotion label. The readers below turn four on-disk layouts into that one form and check the input at the
boundary: every problem is a :class:`DataError` whose message names the file, the 1-based line in that file and the
field, so nothing further down (vocabularies, batching, training) has to guess what went wrong.

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
    the synthetic corpus of :mod:`rnnkit.erc.corpus`; no files (``directory`` is ignored).

MELD and EmoryNLP use weighted F1 over all classes; DailyDialog, where "no emotion" is most of the data, is scored by
micro F1 over the other classes.
"""

from __future__ import annotations

import ast
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "Utterance", "Dialogue", "DataError", "FORMATS", "SPLITS",
    "detect_format", "read_split", "read_file", "write_jsonl", "label_set", "neutral_label", "metric_name",
]

FORMATS = ("meld", "emorynlp", "dailydialog", "jsonl", "builtin")
SPLITS = ("train", "dev", "test")

_FIXED_LABELS = {
    "meld": ("anger", "disgust", "fear", "joy", "neutral", "sadness", "surprise"),
    "emorynlp": ("Joyful", "Mad", "Neutral", "Peaceful", "Powerful", "Sad", "Scared"),
    # Index = the emotion id in dialogues_emotion*.txt.
    "dailydialog": ("no emotion", "anger", "disgust", "fear", "happiness", "sadness", "surprise"),
}
_NEUTRAL = {"meld": "neutral", "emorynlp": "Neutral", "dailydialog": "no emotion", "jsonl": "neutral",
            "builtin": "neutral"}
_CSV_COLUMNS = {
    "meld": ("Utterance", "Speaker", "Emotion", "Dialogue_ID", "Utterance_ID"),
    "emorynlp": ("Utterance", "Speaker", "Emotion", "Scene_ID", "Utterance_ID", "Season", "Episode"),
}
_DIALOGUE_KEY = {"meld": ("Dialogue_ID",), "emorynlp": ("Season", "Episode", "Scene_ID")}
_DAILYDIALOG_PART = {"train": "train", "dev": "validation", "test": "test"}


@dataclass(frozen=True)
class Utterance:
    """One turn: who spoke, what was said, and its emotion label (None when unlabeled)."""

    speaker: str
    text: str
    label: str | None = None


@dataclass(frozen=True)
class Dialogue:
    """An identified, ordered, non-empty sequence of utterances."""

    id: str
    utterances: tuple[Utterance, ...]


class DataError(ValueError):
    """Input data that cannot be used; the message names the file, the 1-based line and the field."""


def _error(path, problem: str, line: int | None = None, field: str | None = None) -> DataError:
    where = str(path)
    if line is not None:
        where += f", line {line}"
    if field is not None:
        where += f", field {field!r}"
    return DataError(f"{where}: {problem}")


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


def read_split(directory, split: str, format: str | None = None) -> list[Dialogue]:
    """Read one split ("train", "dev" or "test") of the dataset in ``directory`` (detected when ``format`` is None).

    Labels are required where the format has a fixed label set (an Emotion column, a DailyDialog emotion file); a
    split file that holds no dialogues is an error, as nothing could be trained or scored on it.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of 'train', 'dev', 'test', got {split!r}")
    if format == "builtin":
        from rnnkit.erc.corpus import builtin_corpus

        return builtin_corpus(split)
    format = detect_format(directory) if format is None else _check_format(format)
    directory = Path(directory)
    candidates = _split_files(directory, format, split)
    path = next((p for p in candidates if p.is_file()), None)
    if path is None:
        unsplit = format == "dailydialog" and (directory / "dialogues_text.txt").is_file()
        hint = " (dialogues_text.txt holds no split: read it with read_file)" if unsplit else ""
        raise DataError(f"{directory}: missing {split} split file for format {format!r}; "
                        f"looked for {' and '.join(map(str, candidates))}{hint}")
    if format == "jsonl":
        dialogues = _read_jsonl(path)
    elif format == "dailydialog":
        emotions = _emotion_file(path)
        if not emotions.is_file():
            raise _error(emotions, f"missing emotion file for the {split} split")
        dialogues = _read_dailydialog(path, emotions)
    else:
        dialogues = _read_table(path, format, require_labels=True)
    if not dialogues:
        raise _error(path, f"the {split} split holds no dialogues")
    return dialogues


def read_file(path, format: str | None = None) -> list[Dialogue]:
    """Read one file: a .jsonl, a MELD or EmoryNLP .csv, or a DailyDialog dialogues_*.txt.

    Unlike read_split, labels may be absent (prediction input): a CSV without an Emotion column, or a DailyDialog text
    file without its emotion file beside it, gives utterances labeled None. Without ``format`` the file name decides,
    and for a .csv its header (a Scene_ID column means EmoryNLP).
    """
    path = Path(path)
    if format is not None:
        _check_format(format, ("meld", "emorynlp", "dailydialog", "jsonl"))
    elif path.suffix == ".jsonl":
        format = "jsonl"
    elif path.suffix == ".txt" and path.name.startswith("dialogues_"):
        format = "dailydialog"
    elif path.suffix != ".csv":
        raise _error(path, "cannot tell the format; expected a .jsonl file, a MELD or EmoryNLP .csv file "
                           "or a DailyDialog dialogues_*.txt file (or pass format=)")
    if format == "jsonl":
        return _read_jsonl(path)
    if format == "dailydialog":
        emotions = _emotion_file(path)
        return _read_dailydialog(path, emotions if emotions.is_file() else None)
    return _read_table(path, format, require_labels=False)


def write_jsonl(path, dialogues) -> None:
    """Write dialogues in the jsonl format above (unlabeled utterances get no "label" key)."""
    with open(path, "w", encoding="utf-8") as f:
        for dialogue in dialogues:
            utterances = [{"speaker": u.speaker, "text": u.text} | ({} if u.label is None else {"label": u.label})
                          for u in dialogue.utterances]
            f.write(json.dumps({"id": dialogue.id, "utterances": utterances}, ensure_ascii=False) + "\n")


def label_set(format: str, train_dialogues) -> list[str]:
    """The class labels, in class-index order: fixed per corpus, or the sorted labels seen in train for jsonl."""
    _check_format(format)
    if format == "builtin":
        from rnnkit.erc.corpus import BUILTIN_LABELS

        return list(BUILTIN_LABELS)
    if format in _FIXED_LABELS:
        return list(_FIXED_LABELS[format])
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


# -- reading -----------------------------------------------------------------------------------------------------

def _read_text(path: Path) -> str:
    """The file decoded as UTF-8 (a leading byte-order mark dropped); a bad byte is reported with its line."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise _error(path, "file not found") from None
    except IsADirectoryError:
        raise _error(path, "is a directory, expected a file") from None
    try:
        return data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as err:
        line_start = data.rfind(b"\n", 0, err.start) + 1
        raise _error(path, f"byte 0x{data[err.start]:02x} at column {err.start - line_start + 1} is not valid UTF-8",
                     line=data.count(b"\n", 0, err.start) + 1) from None


def _lines(path: Path) -> list[str]:
    # str.splitlines would also break on form feeds and U+2028 inside an utterance; only "\n" ends a line here.
    lines = _read_text(path).split("\n")
    if lines[-1] == "":
        lines.pop()
    return [line.removesuffix("\r") for line in lines]


def _read_table(path: Path, format: str | None, require_labels: bool) -> list[Dialogue]:
    """Read a MELD or EmoryNLP CSV file (format None: decided by the header); rows grouped into ordered dialogues."""
    import pandas as pd

    try:
        frame = pd.read_csv(io.StringIO(_read_text(path)), dtype=str, keep_default_na=False, skip_blank_lines=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        # pandas' tokenizer counts lines as we do ("Expected 5 fields in line 3, saw 6").
        line = re.search(r"in line (\d+)", str(err))
        raise _error(path, f"not a readable CSV file ({str(err).strip()})",
                     line=int(line.group(1)) if line else None) from None
    format = format or ("emorynlp" if "Scene_ID" in frame.columns else "meld")
    needed = [c for c in _CSV_COLUMNS[format] if require_labels or c != "Emotion"]
    missing = [c for c in needed if c not in frame.columns]
    if missing:
        raise _error(path, f"missing column {missing[0]!r} ({format} needs {', '.join(needed)}; "
                           f"the header has {', '.join(map(str, frame.columns))})", line=1, field=missing[0])
    labelled = "Emotion" in frame.columns
    # A quoted field may span lines, so each row starts after the newlines of the rows before it (header = line 1).
    newlines = frame.apply(lambda column: column.str.count("\n")).sum(axis=1).tolist()
    dialogues: dict[tuple[int, ...], dict[int, tuple[int, Utterance]]] = {}
    line = 2
    for row, extra in zip(frame.to_dict("records"), newlines):
        if any(value.strip() for value in row.values()):
            key = tuple(_integer(path, line, column, row[column]) for column in _DIALOGUE_KEY[format])
            position = _integer(path, line, "Utterance_ID", row["Utterance_ID"])
            speaker = _speaker(path, line, row["Speaker"], format)
            text = _nonblank(path, line, "Utterance", row["Utterance"])
            label = _label(path, line, "Emotion", row["Emotion"].strip(), format) if labelled else None
            turns = dialogues.setdefault(key, {})
            if position in turns:
                raise _error(path, f"duplicate Utterance_ID {position} in dialogue "
                                   f"{_table_dialogue_id(key)} (first on line {turns[position][0]})",
                             line=line, field="Utterance_ID")
            turns[position] = (line, Utterance(speaker, text, label))
        line += 1 + extra
    return [Dialogue(_table_dialogue_id(key), tuple(turns[p][1] for p in sorted(turns)))
            for key, turns in sorted(dialogues.items())]


def _table_dialogue_id(key: tuple[int, ...]) -> str:
    return str(key[0]) if len(key) == 1 else "s{}e{}_scene{}".format(*key)


def _integer(path, line, field, value: str) -> int:
    try:
        return int(value.strip())
    except ValueError:
        raise _error(path, f"expected an integer, got {value!r}", line=line, field=field) from None


def _nonblank(path, line, field, value) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _error(path, f"expected non-empty text, got {value!r}", line=line, field=field)
    return value.strip()


def _speaker(path, line, value: str, format: str) -> str:
    if format != "emorynlp":
        return _nonblank(path, line, "Speaker", value)
    try:
        names = ast.literal_eval(value.strip())
    except (ValueError, SyntaxError):
        names = None
    if not isinstance(names, (list, tuple)) or not names or not all(isinstance(n, str) and n.strip() for n in names):
        raise _error(path, f"expected a list of names such as ['Monica Geller'], got {value!r}",
                     line=line, field="Speaker")
    return ", ".join(name.strip() for name in names)


def _label(path, line, field, value: str, format: str) -> str:
    if value not in _FIXED_LABELS[format]:
        raise _error(path, f"unknown label {value!r}; {format} labels are {', '.join(_FIXED_LABELS[format])}",
                     line=line, field=field)
    return value


def _emotion_file(text_path: Path) -> Path:
    """dialogues_text.txt -> dialogues_emotion.txt; dialogues_train.txt -> dialogues_emotion_train.txt."""
    name = "dialogues_emotion.txt" if text_path.name == "dialogues_text.txt" else text_path.name.replace(
        "dialogues_", "dialogues_emotion_", 1)
    return text_path.with_name(name)


def _read_dailydialog(text_path: Path, emotion_path: Path | None) -> list[Dialogue]:
    """Read DailyDialog: line n of the text file is a dialogue, line n of the emotion file its emotion ids."""
    texts = _lines(text_path)
    if emotion_path is None:
        emotions = [None] * len(texts)
    else:
        emotions = _lines(emotion_path)
        if len(emotions) != len(texts):
            raise _error(emotion_path, f"has {len(emotions)} lines but {text_path} has {len(texts)} dialogues",
                         line=min(len(emotions), len(texts)) + 1)
    dialogues = []
    for number, (line, ids) in enumerate(zip(texts, emotions), start=1):
        pieces = line.split("__eou__")
        if not pieces[-1].strip():
            pieces.pop()  # the text after the last __eou__
        if not pieces:
            raise _error(text_path, "dialogue with no utterances", line=number)
        turns = [_nonblank(text_path, number, f"utterance {k}", piece) for k, piece in enumerate(pieces, start=1)]
        labels = [None] * len(turns) if ids is None else [
            _emotion_label(emotion_path, number, k, token) for k, token in enumerate(ids.split(), start=1)]
        if len(labels) != len(turns):
            raise _error(emotion_path, f"{len(labels)} emotion ids for {len(turns)} utterances "
                                       f"on line {number} of {text_path}", line=number)
        # DailyDialog records no speaker names, only that the two participants take turns.
        dialogues.append(Dialogue(str(number), tuple(
            Utterance("AB"[k % 2], text, label) for k, (text, label) in enumerate(zip(turns, labels)))))
    return dialogues


def _emotion_label(path, line, k, token: str) -> str:
    names = _FIXED_LABELS["dailydialog"]
    if not token.isdigit() or int(token) >= len(names):
        raise _error(path, f"unknown emotion id {token!r}; expected 0..{len(names) - 1}", line=line,
                     field=f"emotion {k}")
    return names[int(token)]


def _read_jsonl(path: Path) -> list[Dialogue]:
    """Read the jsonl format: one {"id", "utterances": [{"speaker", "text", "label"?}]} object per line."""
    dialogues, first_line = [], {}
    for number, line in enumerate(_lines(path), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise _error(path, f"malformed JSON: {err.msg} at column {err.colno}", line=number) from None
        if not isinstance(record, dict):
            raise _error(path, f"expected a JSON object, got {type(record).__name__}", line=number)
        id_ = record.get("id", str(number))
        if isinstance(id_, bool) or not isinstance(id_, (str, int)) or not str(id_).strip():
            raise _error(path, f"expected a non-empty string, got {id_!r}", line=number, field="id")
        id_ = str(id_)
        if id_ in first_line:
            raise _error(path, f"duplicate dialogue id {id_!r} (first on line {first_line[id_]})", line=number,
                         field="id")
        first_line[id_] = number
        turns = record.get("utterances")
        if not isinstance(turns, list) or not turns:
            problem = "dialogue with no utterances" if turns == [] else f"expected a list of utterances, got {turns!r}"
            raise _error(path, problem, line=number, field="utterances")
        dialogues.append(Dialogue(id_, tuple(_json_utterance(path, number, k, turn) for k, turn in enumerate(turns))))
    return dialogues


def _json_utterance(path, line, k, turn) -> Utterance:
    field = f"utterances[{k}]"
    if not isinstance(turn, dict):
        raise _error(path, f"expected an object with speaker and text, got {turn!r}", line=line, field=field)
    label = turn.get("label")
    if label is not None and (not isinstance(label, str) or not label.strip()):
        raise _error(path, f"expected a non-empty string or null, got {label!r}", line=line, field=f"{field}.label")
    return Utterance(_nonblank(path, line, f"{field}.speaker", turn.get("speaker")),
                     _nonblank(path, line, f"{field}.text", turn.get("text")),
                     None if label is None else label.strip())
