"""Output helpers of the ``orchestrator`` command: JSON, aligned fields and tables."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

from kombu.utils.url import maybe_sanitize_url


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, default=str, ensure_ascii=False))


def _fields(pairs: Iterable[tuple[str, Any]]) -> None:
    """Print ``label: value`` lines, aligned, skipping None values."""
    shown = [(label, value) for label, value in pairs if value is not None]
    width = max((len(label) for label, _ in shown), default=0) + 2
    for label, value in shown:
        print(f"{label + ':':<{width}}{value}")


def _table(rows: Sequence[Sequence[Any]], headers: Sequence[str], right: Iterable[int] = ()) -> str:
    """Render rows as an aligned text table; columns in ``right`` are right-aligned."""
    cells = [[str(h) for h in headers]] + [["-" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    right_set = set(right)
    lines = []
    for row in cells:
        parts = [
            cell.rjust(widths[i]) if i in right_set else cell.ljust(widths[i])
            for i, cell in enumerate(row)
        ]
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


def _sanitize(url: str) -> str:
    return str(maybe_sanitize_url(url))
