"""Plain-text listings that fit the terminal: long cells wrap inside their column, and when the
terminal is too narrow for a readable table each row becomes a small block of `label: text` lines."""

from __future__ import annotations

import shutil
import textwrap
from collections.abc import Sequence

GAP = "  "
MIN_WRAPPED_COLUMN = 24  # narrower wrapped columns are unreadable: switch to blocks instead


def terminal_width(default: int = 100) -> int:
    """The terminal's width in characters (COLUMNS when set; `default` when not a terminal)."""
    return shutil.get_terminal_size((default, 24)).columns


def _table_widths(headers: Sequence[str], rows: Sequence[Sequence[str]], width: int) -> list[int] | None:
    """Column widths that fit `width`, or None when the wrapped columns would get too narrow.
    The first column (the name) never wraps; the others share the room left in proportion to
    their longest cell."""
    natural = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]
    room = width - len(GAP) * (len(headers) - 1)
    if sum(natural) <= room:
        return natural
    widths = list(natural)
    flexible = [i for i in range(1, len(headers)) if natural[i] > MIN_WRAPPED_COLUMN]
    left = room - sum(natural[i] for i in range(len(headers)) if i not in flexible)
    # Each wrapped column gets at least its longest word (words are never cut) and a readable
    # minimum; the room left is water-filled: columns needing little more take it all, the
    # longest ones share the rest.
    for i in flexible:
        longest_word = max(len(word) for cell in [headers[i], *(r[i] for r in rows)] for word in cell.split() or [""])
        widths[i] = min(natural[i], max(MIN_WRAPPED_COLUMN, longest_word))
    left -= sum(widths[i] for i in flexible)
    if left < 0:
        return None
    needy = sorted(flexible, key=lambda i: natural[i] - widths[i])
    for done, i in enumerate(needy):
        extra = min(natural[i] - widths[i], left // (len(needy) - done))
        widths[i] += extra
        left -= extra
    return widths


def _wrap(text: str, width: int) -> list[str]:
    return textwrap.wrap(text, width, break_long_words=False, break_on_hyphens=False) or [""]


def format_wrapped_table(headers: Sequence[str], rows: Sequence[Sequence[str]], *, width: int | None = None) -> str:
    """An aligned table no wider than `width` (the terminal's by default): cells wrap at spaces
    within their column, and rows that wrap are separated by a blank line. Too narrow for that,
    each row is printed as its first cell followed by indented `header: text` lines."""
    width = terminal_width() if width is None else width
    widths = _table_widths(headers, rows, width)
    if widths is None:
        return _format_blocks(headers, rows, width)

    def render(cells: Sequence[str]) -> list[str]:
        wrapped = [_wrap(c, w) for c, w in zip(cells, widths)]
        height = max(len(w) for w in wrapped)
        return [GAP.join((w[k] if k < len(w) else "").ljust(widths[i]) for i, w in enumerate(wrapped)).rstrip()
                for k in range(height)]

    out = render(headers) + [GAP.join("-" * w for w in widths)]
    rendered = [render(r) for r in rows]
    multi = any(len(r) > 1 for r in rendered)
    for index, lines in enumerate(rendered):
        if multi and index:
            out.append("")
        out.extend(lines)
    return "\n".join(out) + "\n"


def _format_blocks(headers: Sequence[str], rows: Sequence[Sequence[str]], width: int) -> str:
    out: list[str] = []
    indent = "    "
    for index, row in enumerate(rows):
        if index:
            out.append("")
        out.append(row[0])
        for header, cell in zip(headers[1:], row[1:]):
            if cell:
                out.extend(textwrap.wrap(f"{header}: {cell}", max(20, width), initial_indent=indent,
                                         subsequent_indent=indent + "  ", break_on_hyphens=False))
    return "\n".join(out) + "\n"
