"""The results files of the benchmarks: values formatted alike, one Markdown table and one CSV layout.

``columns`` are ``[(key, title), ...]``: the row keys shown, in order, with their headings.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path


def fmt(v) -> str:
    """A value for a table: three significant digits below 100, none above; '-' for missing."""
    if v is None:
        return "-"
    if isinstance(v, float):
        return "nan" if math.isnan(v) else (f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}")
    return str(v)


def format_row(row: dict, columns) -> str:
    """One progress line: ``title=value`` for each column the row has."""
    return "  ".join(f"{title}={fmt(row.get(key))}" for key, title in columns if row.get(key) is not None)


def markdown_table(rows: list[dict], columns) -> list[str]:
    lines = ["| " + " | ".join(t for _, t in columns) + " |", "|" + "---|" * len(columns)]
    return lines + ["| " + " | ".join(fmt(r.get(k)) for k, _ in columns) + " |" for r in rows]


def write_csv(rows: list[dict], path: Path, first=()) -> None:
    """``rows`` as CSV: the keys ``first`` in that order, then every other key of the rows."""
    keys = list(dict.fromkeys([*first, *(k for r in rows for k in r)]))
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)


class CsvLog:
    """A CSV file written as its rows come: the header ``columns`` at once, then each row flushed as it
    is added, so that a run stopped half way (a time limit, an out-of-memory kill) keeps what it had.
    A missing value is an empty field; floats keep six significant digits."""

    def __init__(self, path: Path, columns):
        self.path, self.columns = Path(path), list(columns)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "w", newline="") as f:
            csv.writer(f).writerow(self.columns)

    def add(self, row: dict) -> None:
        cells = [row.get(k) for k in self.columns]
        with open(self.path, "a", newline="") as f:
            csv.writer(f).writerow(["" if v is None else f"{v:.6g}" if isinstance(v, float) else v for v in cells])
