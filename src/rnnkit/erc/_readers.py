"""Readers of the on-disk dataset formats (see :mod:`rnnkit.erc.data` for the layouts): each turns one file into
dialogues and reports any problem as a :class:`DataError` naming the file, the 1-based line and the field."""

from __future__ import annotations

import ast
import io
import json
import re
from pathlib import Path

from rnnkit.erc.records import Dialogue, Utterance, data_error

__all__ = ["FIXED_LABELS", "read_table", "read_dailydialog", "emotion_file", "read_jsonl"]

FIXED_LABELS = {
    "meld": ("anger", "disgust", "fear", "joy", "neutral", "sadness", "surprise"),
    "emorynlp": ("Joyful", "Mad", "Neutral", "Peaceful", "Powerful", "Sad", "Scared"),
    # Index = the emotion id in dialogues_emotion*.txt.
    "dailydialog": ("no emotion", "anger", "disgust", "fear", "happiness", "sadness", "surprise"),
}
CSV_COLUMNS = {
    "meld": ("Utterance", "Speaker", "Emotion", "Dialogue_ID", "Utterance_ID"),
    "emorynlp": ("Utterance", "Speaker", "Emotion", "Scene_ID", "Utterance_ID", "Season", "Episode"),
}
DIALOGUE_KEY = {"meld": ("Dialogue_ID",), "emorynlp": ("Season", "Episode", "Scene_ID")}


def _read_text(path: Path) -> str:
    """The file decoded as UTF-8 (a leading byte-order mark dropped); a bad byte is reported with its line."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise data_error(path, "file not found") from None
    except IsADirectoryError:
        raise data_error(path, "is a directory, expected a file") from None
    try:
        return data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as err:
        line_start = data.rfind(b"\n", 0, err.start) + 1
        column = err.start - line_start + 1
        raise data_error(path, f"byte 0x{data[err.start]:02x} at column {column} is not valid UTF-8",
                         line=data.count(b"\n", 0, err.start) + 1) from None


def _lines(path: Path) -> list[str]:
    # str.splitlines would also break on form feeds and U+2028 inside an utterance; only "\n" ends a line here.
    lines = _read_text(path).split("\n")
    if lines[-1] == "":
        lines.pop()
    return [line.removesuffix("\r") for line in lines]


def read_table(path: Path, format: str | None, require_labels: bool) -> list[Dialogue]:
    """Read a MELD or EmoryNLP CSV file (format None: decided by the header); rows grouped into ordered dialogues."""
    import pandas as pd

    try:
        frame = pd.read_csv(io.StringIO(_read_text(path)), dtype=str, keep_default_na=False, skip_blank_lines=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        # pandas' tokenizer counts lines as we do ("Expected 5 fields in line 3, saw 6").
        line = re.search(r"in line (\d+)", str(err))
        raise data_error(path, f"not a readable CSV file ({str(err).strip()})",
                         line=int(line.group(1)) if line else None) from None
    format = format or ("emorynlp" if "Scene_ID" in frame.columns else "meld")
    needed = [c for c in CSV_COLUMNS[format] if require_labels or c != "Emotion"]
    missing = [c for c in needed if c not in frame.columns]
    if missing:
        raise data_error(path, f"missing column {missing[0]!r} ({format} needs {', '.join(needed)}; "
                               f"the header has {', '.join(map(str, frame.columns))})", line=1, field=missing[0])
    labelled = "Emotion" in frame.columns
    # A quoted field may span lines, so each row starts after the newlines of the rows before it (header = line 1).
    newlines = frame.apply(lambda column: column.str.count("\n")).sum(axis=1).tolist()
    dialogues: dict[tuple[int, ...], dict[int, tuple[int, Utterance]]] = {}
    line = 2
    for row, extra in zip(frame.to_dict("records"), newlines):
        if any(value.strip() for value in row.values()):
            key = tuple(_integer(path, line, column, row[column]) for column in DIALOGUE_KEY[format])
            position = _integer(path, line, "Utterance_ID", row["Utterance_ID"])
            speaker = _speaker(path, line, row["Speaker"], format)
            text = _nonblank(path, line, "Utterance", row["Utterance"])
            label = _label(path, line, "Emotion", row["Emotion"].strip(), format) if labelled else None
            turns = dialogues.setdefault(key, {})
            if position in turns:
                raise data_error(path, f"duplicate Utterance_ID {position} in dialogue "
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
        raise data_error(path, f"expected an integer, got {value!r}", line=line, field=field) from None


def _nonblank(path, line, field, value) -> str:
    if not isinstance(value, str) or not value.strip():
        raise data_error(path, f"expected non-empty text, got {value!r}", line=line, field=field)
    return value.strip()


def _speaker(path, line, value: str, format: str) -> str:
    if format != "emorynlp":
        return _nonblank(path, line, "Speaker", value)
    try:
        names = ast.literal_eval(value.strip())
    except (ValueError, SyntaxError):
        names = None
    if not isinstance(names, (list, tuple)) or not names or not all(isinstance(n, str) and n.strip() for n in names):
        raise data_error(path, f"expected a list of names such as ['Monica Geller'], got {value!r}",
                         line=line, field="Speaker")
    return ", ".join(name.strip() for name in names)


def _label(path, line, field, value: str, format: str) -> str:
    if value not in FIXED_LABELS[format]:
        raise data_error(path, f"unknown label {value!r}; {format} labels are {', '.join(FIXED_LABELS[format])}",
                         line=line, field=field)
    return value


def emotion_file(text_path: Path) -> Path:
    """dialogues_text.txt -> dialogues_emotion.txt; dialogues_train.txt -> dialogues_emotion_train.txt."""
    name = "dialogues_emotion.txt" if text_path.name == "dialogues_text.txt" else text_path.name.replace(
        "dialogues_", "dialogues_emotion_", 1)
    return text_path.with_name(name)


def read_dailydialog(text_path: Path, emotion_path: Path | None) -> list[Dialogue]:
    """Read DailyDialog: line n of the text file is a dialogue, line n of the emotion file its emotion ids."""
    texts = _lines(text_path)
    if emotion_path is None:
        emotions = [None] * len(texts)
    else:
        emotions = _lines(emotion_path)
        if len(emotions) != len(texts):
            raise data_error(emotion_path, f"has {len(emotions)} lines but {text_path} has {len(texts)} dialogues",
                             line=min(len(emotions), len(texts)) + 1)
    dialogues = []
    for number, (line, ids) in enumerate(zip(texts, emotions), start=1):
        pieces = line.split("__eou__")
        if not pieces[-1].strip():
            pieces.pop()  # the text after the last __eou__
        if not pieces:
            raise data_error(text_path, "dialogue with no utterances", line=number)
        turns = [_nonblank(text_path, number, f"utterance {k}", piece) for k, piece in enumerate(pieces, start=1)]
        labels = [None] * len(turns) if ids is None else [
            _emotion_label(emotion_path, number, k, token) for k, token in enumerate(ids.split(), start=1)]
        if len(labels) != len(turns):
            raise data_error(emotion_path, f"{len(labels)} emotion ids for {len(turns)} utterances "
                                           f"on line {number} of {text_path}", line=number)
        # DailyDialog records no speaker names, only that the two participants take turns.
        dialogues.append(Dialogue(str(number), tuple(
            Utterance("AB"[k % 2], text, label) for k, (text, label) in enumerate(zip(turns, labels)))))
    return dialogues


def _emotion_label(path, line, k, token: str) -> str:
    names = FIXED_LABELS["dailydialog"]
    if not token.isdigit() or int(token) >= len(names):
        raise data_error(path, f"unknown emotion id {token!r}; expected 0..{len(names) - 1}", line=line,
                         field=f"emotion {k}")
    return names[int(token)]


def read_jsonl(path: Path) -> list[Dialogue]:
    """Read the jsonl format: one {"id", "utterances": [{"speaker", "text", "label"?}]} object per line."""
    dialogues, first_line = [], {}
    for number, line in enumerate(_lines(path), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise data_error(path, f"malformed JSON: {err.msg} at column {err.colno}", line=number) from None
        if not isinstance(record, dict):
            raise data_error(path, f"expected a JSON object, got {type(record).__name__}", line=number)
        id_ = record.get("id", str(number))
        if isinstance(id_, bool) or not isinstance(id_, (str, int)) or not str(id_).strip():
            raise data_error(path, f"expected a non-empty string, got {id_!r}", line=number, field="id")
        id_ = str(id_)
        if id_ in first_line:
            raise data_error(path, f"duplicate dialogue id {id_!r} (first on line {first_line[id_]})", line=number,
                             field="id")
        first_line[id_] = number
        turns = record.get("utterances")
        if not isinstance(turns, list) or not turns:
            problem = "dialogue with no utterances" if turns == [] else f"expected a list of utterances, got {turns!r}"
            raise data_error(path, problem, line=number, field="utterances")
        dialogues.append(Dialogue(id_, tuple(_json_utterance(path, number, k, turn) for k, turn in enumerate(turns))))
    return dialogues


def _json_utterance(path, line, k, turn) -> Utterance:
    field = f"utterances[{k}]"
    if not isinstance(turn, dict):
        raise data_error(path, f"expected an object with speaker and text, got {turn!r}", line=line, field=field)
    label = turn.get("label")
    if label is not None and (not isinstance(label, str) or not label.strip()):
        raise data_error(path, f"expected a non-empty string or null, got {label!r}", line=line, field=f"{field}.label")
    return Utterance(_nonblank(path, line, f"{field}.speaker", turn.get("speaker")),
                     _nonblank(path, line, f"{field}.text", turn.get("text")),
                     None if label is None else label.strip())
