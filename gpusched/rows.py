"""Text tables read with located errors.

Every trace file goes through here. CSV and JSON-lines files are read as UTF-8 text (a leading byte-order
mark is allowed, as spreadsheet programs write one); every record keeps the 1-based line it starts on, as a
text editor numbers lines (blank lines count; a quoted field spanning lines keeps its first line). A bad value
is reported as::

    <file>: line <n>: field '<name>' = <value> <what is wrong> (<k> bad row(s); <the fix>)

:class:`RowChecker` collects masks of bad rows (vectorised) and at the end either raises that message for the
earliest bad line (``on_error="raise"``) or drops the bad rows and warns with their count
(``on_error="skip"``): nothing is dropped silently.
"""
from __future__ import annotations

import csv
import io
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd

from gpusched.errors import ConfigError, GpuschedError, TraceError
from gpusched.trace import Problem, as_numbers, count_problems

ON_ERROR = ("raise", "skip")


def check_on_error(on_error: str) -> None:
    if on_error not in ON_ERROR:
        raise ConfigError(f"on_error={on_error!r}: use 'raise' or 'skip'")


def _short(value: Any) -> str:
    """The value as the file had it (numpy scalars as plain Python), cut to 80 characters."""
    text = repr(value.item() if isinstance(value, np.generic) else value)
    return text if len(text) <= 80 else text[:77] + "..."


SKIP_FIX = "correct them in the file, or pass on_error='skip' to drop them"


class RowChecker:
    """Bad-row masks of one file, with the earliest offending line kept for the message.

    ``lines[i]`` is the 1-based line of data row ``i``; ``skipped``/``first_skipped``: rows the reader
    already dropped (malformed records in skip mode) and the line of the first. ``error`` is the class
    raised (a trace's :class:`TraceError`; a configuration table's :class:`ConfigError`) and ``fix`` the
    advice that ends the message.
    """

    def __init__(self, path: Path, lines: Iterable[int], on_error: str = "raise", skipped: int = 0,
                 first_skipped: int | None = None, error: type[GpuschedError] = TraceError, fix: str = SKIP_FIX):
        check_on_error(on_error)
        self.path, self.lines, self.on_error = path, np.asarray(lines, dtype=np.int64), on_error
        self.error, self.fix = error, fix
        self.bad = np.zeros(len(self.lines), dtype=bool)
        self.first: tuple | None = None
        self.skipped, self.first_skipped = skipped, first_skipped

    def flag(self, mask: Any, field: str, values: Any, reason: str) -> None:
        """Rows where ``mask`` is true break a rule: field ``field`` (its value in ``values``) ``reason``.

        A row already flagged keeps its first reason, so a message always shows the value as the file has it.
        """
        mask = np.asarray(mask, dtype=bool) & ~self.bad
        if not mask.any():
            return
        i = int(np.flatnonzero(mask)[0])
        value = values.iloc[i] if isinstance(values, pd.Series) else np.asarray(values, dtype=object)[i]
        if self.first is None or self.lines[i] < self.first[0]:
            self.first = (int(self.lines[i]), field, value, reason)
        self.bad |= mask

    def flag_problems(self, table: pd.DataFrame, problems: Iterable[Problem], raw: pd.DataFrame | None = None) -> None:
        """Flag each problem of ``table``, showing the file's own text (``raw``) where it has the column."""
        for p in problems:
            values = raw[p.column] if raw is not None and p.column in raw.columns else table[p.column]
            self.flag(p.mask, p.column, values, p.reason)

    def finish(self) -> tuple[np.ndarray, int]:
        """Raise (``on_error="raise"``) or return ``(rows to keep, number of rows skipped)``, warning if any."""
        n_bad = int(self.bad.sum())
        if self.first is not None and self.on_error == "raise":
            line, field, value, reason = self.first
            raise self.error(f"{self.path}: line {line}: field {field!r} = {_short(value)} {reason} ({n_bad} bad "
                             f"row(s); {self.fix})")
        skipped = n_bad + self.skipped
        if skipped:
            firsts = [(self.first[0], f"{self.first[1]!r} {self.first[3]}")] if self.first else []
            if self.first_skipped is not None:
                firsts.append((self.first_skipped, "malformed record"))
            line, what = min(firsts)
            warnings.warn(f"{self.path}: skipped {skipped} bad row(s); first at line {line} ({what})", stacklevel=4)
        return ~self.bad, skipped


def require_columns(path: Path, have: Iterable[str], need: Iterable[str], line: int = 1,
                    error: type[GpuschedError] = TraceError) -> None:
    have = list(have)
    for c in need:
        if c not in have:
            raise error(f"{path}: line {line}: missing column {c!r} (have {have}); add it or pick the right file")


# ---- decoding -----------------------------------------------------------------------------------------

def utf8_error(path: Path) -> TraceError:
    """The first line of ``path`` that is not valid UTF-8, as a located error (UTF-8 never uses byte 0x0A
    inside a character, so decoding line by line finds the real line)."""
    with open(path, "rb") as f:
        for no, raw in enumerate(f, start=1):
            try:
                raw.decode("utf-8-sig" if no == 1 else "utf-8")
            except UnicodeDecodeError as e:
                return TraceError(f"{path}: line {no}: byte 0x{raw[e.start]:02x} at byte {e.start + 1} of the line "
                                  f"is not valid UTF-8; save the file as UTF-8 (or remove the byte)")
    return TraceError(f"{path}: not valid UTF-8; save the file as UTF-8")


def first_text_line(path: Path) -> tuple[int, str]:
    """``(line number, text)`` of the first non-blank line, decoded on its own (a bad byte further down is
    left for the reader, which reports it on its own line)."""
    with open(path, "rb") as f:
        for no, raw in enumerate(f, start=1):
            if b"\x00" in raw:
                raise TraceError(f"{path}: line {no}: holds a NUL byte: not a text file; unknown trace format")
            try:
                text = raw.decode("utf-8-sig" if no == 1 else "utf-8").strip()
            except UnicodeDecodeError:
                raise utf8_error(path) from None
            if text:
                return no, text
    raise TraceError(f"{path}: the file is empty; no trace to read")


# ---- CSV ------------------------------------------------------------------------------------------------

@dataclass
class TextTable:
    """Records of a text file: ``df`` (all values as read: str for CSV, JSON values for JSON lines), the
    1-based line of each record, rows the reader dropped in skip mode and the line of the first."""

    df: pd.DataFrame
    lines: np.ndarray
    skipped: int = 0
    first_skipped: int | None = None
    header_line: int = 1

    def checker(self, path: Path, on_error: str, error: type[GpuschedError] = TraceError,
                fix: str = SKIP_FIX) -> RowChecker:
        return RowChecker(path, self.lines, on_error, self.skipped, self.first_skipped, error, fix)


def read_csv_text(path: Path, on_error: str = "raise", names: list[str] | None = None,
                  error: type[GpuschedError] = TraceError, skippable: bool = True) -> TextTable:
    """Read a CSV as text: with a header line, or without one when ``names`` gives the columns.

    A record with another number of fields than the header is malformed (raised, or skipped and counted).
    Raises ``error`` (:class:`TraceError` by default) for an unreadable or empty file and for a header
    without data rows; ``skippable=False`` leaves the advice to pass ``on_error='skip'`` out of messages.
    """
    if not Path(path).is_file():
        raise error(f"{path}: no such file")
    check_on_error(on_error)
    clean = _read_clean_csv(path, names)
    if clean is not None:
        return clean
    records: list[list[str]] = []
    lines: list[int] = []
    skipped, first_skipped = 0, None
    cols, header_line = names, None
    reader = None
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            reader = csv.reader(f)
            end = 0
            for rec in reader:
                start, end = end + 1, reader.line_num
                if not rec or (len(rec) == 1 and not rec[0].strip()):
                    continue  # a blank line
                if cols is None:
                    cols, header_line = [c.strip() for c in rec], start
                    dup = sorted({c for c in cols if cols.count(c) > 1})
                    if dup:
                        raise error(f"{path}: line {start}: column(s) {dup} appear more than once in the "
                                    f"header; rename them")
                    continue
                if len(rec) != len(cols):
                    if on_error == "raise":
                        what = f"the header (line {header_line}) has" if header_line else "the format has"
                        skip = " or pass on_error='skip' to drop it" if skippable else ""
                        raise error(f"{path}: line {start}: malformed row: {len(rec)} fields but {what} "
                                    f"{len(cols)} ({','.join(rec)[:100]!r}); fix the row (quote a field that "
                                    f"holds a comma){skip}")
                    skipped += 1
                    first_skipped = first_skipped or start
                    continue
                records.append(rec)
                lines.append(start)
    except UnicodeDecodeError:
        raise error(str(utf8_error(path))) from None
    except csv.Error as e:
        line = reader.line_num if reader is not None else 1
        raise error(f"{path}: line {line}: cannot read as CSV: {e}") from None
    if cols is None:
        raise error(f"{path}: the file is empty; nothing to read")
    if not records and not skipped:
        if header_line:
            raise error(f"{path}: has a header (line {header_line}) but no data rows; nothing to load "
                        f"(add rows, one record per line)")
        raise error(f"{path}: the file is empty; nothing to read")
    df = pd.DataFrame.from_records(records, columns=cols) if records else pd.DataFrame(columns=cols, dtype=object)
    return TextTable(df, np.asarray(lines, dtype=np.int64), skipped, first_skipped, header_line or 0)


def _read_clean_csv(path: Path, names: list[str] | None) -> TextTable | None:
    """The fast path of :func:`read_csv_text` (pandas' C parser), for a file where each record is one line:
    valid UTF-8, no quote character, no lone carriage return, every row with the header's field count.
    Returns None for any other file, which the careful reader then reads record by record."""
    data = path.read_bytes()
    if b'"' in data or b"\r" in data.replace(b"\r\n", b""):
        return None
    try:
        data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return None
    lines = [i for i, line in enumerate(data.split(b"\n"), start=1) if line.strip()]
    if len(lines) < (1 if names else 2):
        return None
    try:
        df = pd.read_csv(io.BytesIO(data), dtype=str, keep_default_na=False, encoding="utf-8-sig",
                         header=None if names else 0, names=names, skip_blank_lines=True, engine="c")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError):
        return None
    header = None if names else [c.strip() for c in data.split(b"\n")[lines[0] - 1].decode("utf-8-sig").split(",")]
    records = lines if names else lines[1:]
    if len(df) != len(records) or df.isna().to_numpy().any() or (header and len(set(header)) != len(header)):
        return None  # a short row, a blank line pandas kept, a repeated column name: the careful reader says
    if header:
        df.columns = header
    return TextTable(df, np.asarray(records, dtype=np.int64), header_line=0 if names else lines[0])


def read_jsonl(path: Path, on_error: str = "raise") -> TextTable:
    """Read a JSON-lines file: one JSON object per non-blank line."""
    check_on_error(on_error)
    records, lines, skipped, first_skipped = [], [], 0, None
    with open(path, "rb") as f:
        for no, raw in enumerate(f, start=1):
            try:
                text = raw.decode("utf-8-sig" if no == 1 else "utf-8")
                if not text.strip():
                    continue
                rec = json.loads(text)
                if not isinstance(rec, dict):
                    raise ValueError(f"a JSON {type(rec).__name__}, not an object")
            except UnicodeDecodeError as e:
                if on_error == "raise":
                    raise TraceError(f"{path}: line {no}: byte 0x{raw[e.start]:02x} at byte {e.start + 1} of the "
                                     f"line is not valid UTF-8; save the file as UTF-8") from None
            except ValueError as e:
                if on_error == "raise":
                    raise TraceError(f"{path}: line {no}: malformed JSON record ({e}); each line must be one "
                                     f"JSON object, or pass on_error='skip' to drop such lines") from None
            else:
                records.append(rec)
                lines.append(no)
                continue
            skipped += 1
            first_skipped = first_skipped or no
    if not records and not skipped:
        raise TraceError(f"{path}: the file is empty; no trace to read")
    return TextTable(pd.DataFrame.from_records(records), np.asarray(lines, dtype=np.int64), skipped, first_skipped)


# ---- values ---------------------------------------------------------------------------------------------

def parse_counts(rows: RowChecker, values: pd.Series, field: str) -> np.ndarray:
    """Token counts as int64, range-checked first (:func:`gpusched.trace.count_problems`); 0 where bad."""
    numbers = as_numbers(values)
    for p in count_problems(numbers, field):
        rows.flag(p.mask, field, values, p.reason)
    v = numbers.values
    good = ~np.isnan(v) & ~rows.bad
    return np.where(good, v, 0).astype(np.int64)


def parse_numbers(rows: RowChecker, values: pd.Series, field: str, *, allow_missing: bool = False,
                  allow_negative: bool = False, unit: str = "") -> np.ndarray:
    """Finite floats (NaN where missing and allowed); flags missing, non-numeric, infinite and (unless
    allowed) negative values. ``unit`` names what the number counts (``"seconds"``) in the messages."""
    v, missing, nan = as_numbers(values)
    of = f" of {unit}" if unit else ""
    if not allow_missing:
        rows.flag(missing, field, values, "is missing")
    rows.flag(nan, field, values, f"is not a number{of}" + (" (leave it empty for none)" if allow_missing else ""))
    rows.flag(~missing & ~nan & ~np.isfinite(v), field, values, "is not a finite number")
    if not allow_negative:
        rows.flag(np.isfinite(v) & (v < 0), field, values, f"is negative; it must be a number{of} >= 0")
    return v
