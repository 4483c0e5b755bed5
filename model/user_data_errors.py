"""The named failures of reading a user's training file (`model.user_data`,
`model.user_formats`, `model.user_rows`).

Every one is a usage error (exit 2): the file is the user's input, and the message
says which file, which line (JSONL) or record's first line (CSV), and which field, as
`data.csv:17: field 'threat': must be true/false/1/0/yes/no or empty, got 'maybe'`.
Nothing is written when one is raised: the loader fails before training starts.
"""

from __future__ import annotations

from pathlib import Path

from model.errors import ExitCode, ModstreamError


class UserDataError(ModstreamError):
    """A training file cannot be used; `path`, `line` and `field` say where."""

    exit_code = ExitCode.USAGE

    def __init__(
        self, path: Path | str, problem: str, line: int | None = None, field: str | None = None
    ) -> None:
        self.path = Path(path)
        self.line = line
        self.field = field
        self.problem = problem
        where = str(path) if line is None else f"{path}:{line}"
        if field is not None:
            where += f": field {field!r}"
        super().__init__(f"{where}: {problem}")


class UnsupportedFormatError(UserDataError):
    """The file is neither JSONL (`.jsonl`, `.ndjson`) nor CSV (`.csv`)."""


class FileEncodingError(UserDataError):
    """Not UTF-8: invalid bytes on a line, or a UTF-16/UTF-32 byte order mark."""


class LineTooLongError(UserDataError):
    """A line (JSONL) or record (CSV) is longer than the byte bound; reading stops there."""


class BadJsonError(UserDataError):
    """A JSONL line is not one JSON value (syntax, NaN/Infinity, a repeated key, nesting)."""


class BadCsvError(UserDataError):
    """A CSV record cannot be parsed, or has more or fewer fields than the header."""


class WrongTypeError(UserDataError):
    """A field holds a value of the wrong type (a label that is not a boolean, …)."""


class MissingTextError(UserDataError):
    """A row (or the CSV header) has no text field."""


class EmptyTextError(UserDataError):
    """A row's text is empty or only whitespace."""


class TextTooLongError(UserDataError):
    """A row's text is longer than the hard cap on a text (`MAX_TEXT_CHARS`)."""


class UnknownSplitError(UserDataError):
    """A split field holds something other than train, validation or test."""


class MixedSplitError(UserDataError):
    """Some rows declare a split and others do not."""


class UnknownFieldError(UserDataError):
    """A row with a `labels` object has another field that is neither text nor split."""


class UnknownLabelFieldError(UserDataError):
    """A label field that the label spec does not name."""


class BadLabelNameError(UserDataError):
    """A label field whose name breaks `model.label_names`' rule."""


class TooManyLabelsError(UserDataError):
    """More distinct labels than `model.label_names.MAX_LABELS`."""


class DuplicateFieldError(UserDataError):
    """A CSV header names a column twice."""


class EmptyDataError(UserDataError):
    """The file holds no data row."""


class SplitDuplicateError(UserDataError):
    """The same text (after normalisation) is declared in two different splits."""


class LabelSupportError(UserDataError):
    """A label has no positive or no negative example in train or validation."""
