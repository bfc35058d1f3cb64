"""Readers of the on-disk dataset formats (see :mod:`rnnkit.erc.data` for the layouts): each turns one file into
dialogues and reports any problem as a :class:`DataError` naming the file, the 1-based line and the field.

Input is checked strictly so that nothing is silently misread: files are UTF-8, CSV rows have exactly the header's
fields, JSON lines are standard JSON (no NaN, no repeated keys), integers are plain ASCII digits, and text fields
(ids, speakers, utterances, labels) are non-blank and hold no NUL character or lone surrogate.
"""

from __future__ import annotations

import ast
import contextlib
import csv
import io
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from rnnkit.erc.records import Dialogue, Utterance, data_error

__all__ = ["FIXED_LABELS", "read_table", "read_dailydialog", "emotion_file", "read_jsonl", "iter_jsonl"]

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


@contextlib.contextmanager
def _open(path: Path) -> Iterator[BinaryIO]:
    """``path`` opened for reading bytes; a DataError naming it when it is missing, a directory or unreadable."""
    try:
        f = path.open("rb")
    except FileNotFoundError:
        raise data_error(path, "file not found") from None
    except IsADirectoryError:
        raise data_error(path, "is a directory, expected a file") from None
    except OSError as err:
        raise data_error(path, f"cannot be read ({err.strerror or err})") from None
    with f:
        yield f


def _decode(path: Path, data: bytes, line: int = 1) -> str:
    """``data``, read from ``path`` from the start of its line ``line``, decoded as UTF-8; a bad byte is reported
    with its line and column."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line_start = data.rfind(b"\n", 0, err.start) + 1
        column = err.start - line_start + 1
        raise data_error(path, f"byte 0x{data[err.start]:02x} at column {column} is not valid UTF-8",
                         line=line + data.count(b"\n", 0, err.start)) from None


def _read_text(path: Path) -> str:
    """The file decoded as UTF-8 (a leading byte-order mark dropped); a bad byte is reported with its line."""
    with _open(path) as f:
        data = f.read()
    return _decode(path, data).removeprefix("\ufeff")


def _lines(path: Path) -> list[str]:
    # str.splitlines would also break on form feeds and U+2028 inside an utterance; only "\n" ends a line here.
    lines = _read_text(path).split("\n")
    if lines[-1] == "":
        lines.pop()
    return [line.removesuffix("\r") for line in lines]


def _stream_lines(path: Path) -> Iterator[tuple[int, str]]:
    """The 1-based number and text of each line of ``path``, as :func:`_lines` gives them, read one at a time."""
    with _open(path) as f:
        for number, data in enumerate(f, start=1):
            line = _decode(path, data, number).removesuffix("\n").removesuffix("\r")
            yield number, line.removeprefix("\ufeff") if number == 1 else line


def read_table(path: Path, format: str | None, require_labels: bool) -> list[Dialogue]:
    """Read a MELD or EmoryNLP CSV file (format None: decided by the header); rows grouped into ordered dialogues.

    Each column the format reads must appear once in the header, and every row must have the header's number of
    fields: a missing or extra comma would otherwise shift values into the wrong columns.
    """
    rows = _csv_rows(path)
    _, header = next(rows, (1, None))
    if header is None:
        raise data_error(path, "empty file; expected a header line", line=1)
    format = format or ("emorynlp" if "Scene_ID" in header else "meld")
    needed = [c for c in CSV_COLUMNS[format] if require_labels or c != "Emotion"]
    missing = [c for c in needed if c not in header]
    if missing:
        raise data_error(path, f"missing column {missing[0]!r} ({format} needs {', '.join(needed)}; "
                               f"the header has {', '.join(map(repr, header))})", line=1, field=missing[0])
    repeated = next((c for c in CSV_COLUMNS[format] if header.count(c) > 1), None)
    if repeated is not None:
        raise data_error(path, f"column {repeated!r} appears {header.count(repeated)} times in the header",
                         line=1, field=repeated)
    labelled = "Emotion" in header
    dialogues: dict[tuple[int, ...], dict[int, tuple[int, Utterance]]] = {}
    for line, values in rows:
        if not any(value.strip() for value in values):
            continue
        if len(values) != len(header):
            raise data_error(path, f"not a readable CSV row: it has {len(values)} fields where the header has "
                                   f"{len(header)}", line=line)
        row = dict(zip(header, values))
        key = tuple(_integer(path, line, column, row[column]) for column in DIALOGUE_KEY[format])
        position = _integer(path, line, "Utterance_ID", row["Utterance_ID"])
        speaker = _speaker(path, line, row["Speaker"], format)
        text = _text(path, line, "Utterance", row["Utterance"])
        label = _label(path, line, "Emotion", row["Emotion"].strip(), format) if labelled else None
        turns = dialogues.setdefault(key, {})
        if position in turns:
            raise data_error(path, f"duplicate Utterance_ID {position} in dialogue "
                                   f"{_table_dialogue_id(key)} (first on line {turns[position][0]})",
                             line=line, field="Utterance_ID")
        turns[position] = (line, Utterance(speaker, text, label))
    return [Dialogue(_table_dialogue_id(key), tuple(turns[p][1] for p in sorted(turns)))
            for key, turns in sorted(dialogues.items())]


def _csv_rows(path: Path):
    """Yield (line, fields) for each CSV row, ``line`` being where the row starts (a quoted field may span lines).

    The reader is strict, so a quote left open is an error rather than a field that swallows the rest of the file.
    """
    # newline="\n": only "\n" ends a line, as in _lines, so the csv module's line_num counts the lines we report.
    reader = csv.reader(io.StringIO(_read_text(path), newline="\n"), strict=True)
    line = 1
    try:
        for fields in reader:
            yield line, fields
            line = reader.line_num + 1
    except csv.Error as err:
        # The csv module's advice ("do you need to open the file in universal-newline mode?") is not the user's to act on.
        problem = str(err).split(" - ")[0]
        if problem == "unexpected end of data":
            problem = "a quote opened on this line is never closed"
        raise data_error(path, f"not a readable CSV file ({problem})", line=line) from None


def _table_dialogue_id(key: tuple[int, ...]) -> str:
    return str(key[0]) if len(key) == 1 else "s{}e{}_scene{}".format(*key)


def _integer(path, line, field, value: str) -> int:
    """A non-negative integer in ASCII digits; int() alone would also take "1_7", "+1" and "\u0663" (Arabic-Indic 3)."""
    digits = value.strip()
    if digits.isascii() and digits.isdigit():
        try:
            return int(digits)
        except ValueError:  # more digits than int() converts (sys.get_int_max_str_digits())
            pass
    raise data_error(path, f"expected an integer, got {value!r}", line=line, field=field)


_UNWRITABLE = re.compile("[\x00\ud800-\udfff]")


def _text(path, line, field, value) -> str:
    """``value`` stripped, if it is non-blank text that can be written back out.

    A NUL character is rejected (text tools and C libraries take it for the end of the string), and so is a lone
    surrogate: a JSON escape such as \\ud800 or a Python string literal can spell one, but UTF-8 cannot encode it,
    so it would pass reading and crash the first write of the dialogue.
    """
    if not isinstance(value, str) or not value.strip():
        raise data_error(path, f"expected non-empty text, got {value!r}", line=line, field=field)
    bad = _UNWRITABLE.search(value)
    if bad:
        char = bad.group()
        what = "a NUL character" if char == "\x00" else f"a lone surrogate U+{ord(char):04X}, which UTF-8 cannot encode"
        raise data_error(path, f"contains {what} (character {bad.start() + 1})", line=line, field=field)
    return value.strip()


_STRING_LITERAL = r"'(?:[^'\\]|\\.)*'|" r'"(?:[^"\\]|\\.)*"'
# A list (or tuple) of string literals and nothing else: literal_eval of arbitrary text can exhaust the parser's stack
# ("-" * 100000 + "1" is a MemoryError, "1+" * 50000 a RecursionError), while string literals cannot nest.
_NAME_LIST = re.compile(rf"\s*[\[(]\s*(?:{_STRING_LITERAL})(?:\s*,\s*(?:{_STRING_LITERAL}))*\s*,?\s*[\])]\s*")


def _speaker(path, line, value: str, format: str) -> str:
    if format != "emorynlp":
        return _text(path, line, "Speaker", value)
    try:
        names = ast.literal_eval(value.strip()) if _NAME_LIST.fullmatch(value) else None
    except (ValueError, SyntaxError):
        names = None
    if not isinstance(names, (list, tuple)):
        raise data_error(path, f"expected a list of names such as ['Monica Geller'], got {value!r}",
                         line=line, field="Speaker")
    return ", ".join(_text(path, line, "Speaker", name) for name in names)


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
        turns = [_text(text_path, number, f"utterance {k}", piece) for k, piece in enumerate(pieces, start=1)]
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
    index = _integer(path, line, f"emotion {k}", token)
    if index >= len(names):
        raise data_error(path, f"unknown emotion id {token!r}; expected 0..{len(names) - 1}", line=line,
                         field=f"emotion {k}")
    return names[index]


def read_jsonl(path: Path) -> list[Dialogue]:
    """Read the jsonl format: one {"id", "utterances": [{"speaker", "text", "label"?}]} object per line."""
    return list(iter_jsonl(path))


def iter_jsonl(path: Path) -> Iterator[Dialogue]:
    """:func:`read_jsonl` one line at a time, for files larger than memory: each dialogue is yielded once its line
    is checked, and only the ids seen so far are kept (to refuse a repeated one)."""
    first_line = {}
    for number, line in _stream_lines(path):
        if not line.strip():
            continue
        record = _json(path, number, line)
        if not isinstance(record, dict):
            raise data_error(path, f"expected a JSON object, got {type(record).__name__}", line=number)
        id_ = record.get("id", str(number))
        if isinstance(id_, int) and not isinstance(id_, bool):
            if id_ < 0:
                raise data_error(path, f"expected text or a non-negative integer, got {id_}", line=number, field="id")
            id_ = str(id_)
        _text(path, number, "id", id_)  # checked, but kept as written: the id names the dialogue in predictions
        if id_ in first_line:
            raise data_error(path, f"duplicate dialogue id {id_!r} (first on line {first_line[id_]})", line=number,
                             field="id")
        first_line[id_] = number
        turns = record.get("utterances")
        if not isinstance(turns, list) or not turns:
            problem = "dialogue with no utterances" if turns == [] else f"expected a list of utterances, got {turns!r}"
            raise data_error(path, problem, line=number, field="utterances")
        yield Dialogue(id_, tuple(_json_utterance(path, number, k, turn) for k, turn in enumerate(turns)))


def _json(path, line: int, text: str):
    """``text`` parsed as standard JSON; what json.loads would take but JSON does not have is malformed here.

    That is NaN and Infinity, and a key given twice in one object (json.loads keeps the last one silently); an
    integer too long for int() and nesting deeper than Python's recursion limit are malformed too.
    """
    def malformed(problem: str, field: str | None = None):
        return data_error(path, f"malformed JSON: {problem}", line=line, field=field)

    def constant(name: str):
        raise malformed(f"{name} is not JSON")

    def integer(digits: str) -> int:
        try:
            return int(digits)
        except ValueError:  # more than sys.get_int_max_str_digits() digits
            raise malformed(f"an integer of {len(digits.lstrip('-'))} digits") from None

    def unique_keys(pairs: list[tuple[str, object]]) -> dict:
        seen = set()
        for key, _ in pairs:
            if key in seen:
                raise malformed(f"key {key!r} appears twice in one object", field=key)
            seen.add(key)
        return dict(pairs)

    try:
        return json.loads(text, parse_constant=constant, parse_int=integer, object_pairs_hook=unique_keys)
    except json.JSONDecodeError as err:
        raise malformed(f"{err.msg} at column {err.colno}") from None
    except RecursionError:
        raise malformed("nested too deeply") from None


def _json_utterance(path, line, k, turn) -> Utterance:
    field = f"utterances[{k}]"
    if not isinstance(turn, dict):
        raise data_error(path, f"expected an object with speaker and text, got {turn!r}", line=line, field=field)
    label = turn.get("label")
    return Utterance(_text(path, line, f"{field}.speaker", turn.get("speaker")),
                     _text(path, line, f"{field}.text", turn.get("text")),
                     None if label is None else _text(path, line, f"{field}.label", label))
