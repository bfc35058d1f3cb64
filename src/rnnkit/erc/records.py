"""The records ERC code works on, and the error every reader raises for bad input."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Utterance", "Dialogue", "DataError", "data_error"]


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


def data_error(path, problem: str, line: int | None = None, field: str | None = None) -> DataError:
    """``DataError("PATH, line N, field 'F': problem")``, leaving out the parts that are None."""
    where = str(path)
    if line is not None:
        where += f", line {line}"
    if field is not None:
        where += f", field {field!r}"
    return DataError(f"{where}: {problem}")
