"""Tables as text, written one way: aligned columns for the console and ``.txt`` artifacts, Markdown for
``.md`` artifacts. Cells are strings the caller has formatted."""

from __future__ import annotations

from collections.abc import Sequence


def text_table(rows: Sequence[Sequence[str]], rule: bool = True) -> str:
    """``rows`` (the first the header) in columns padded to their widest cell, two spaces apart, trailing
    spaces dropped; with ``rule`` a dashed line under the header."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    if rule:
        lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown_table(head: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[int] = ()) -> str:
    """A Markdown table (no trailing newline); the columns whose indices are in ``right`` right-aligned."""
    rule = "|" + "|".join("---:" if i in right else "---" for i in range(len(head))) + "|"
    return "\n".join(["| " + " | ".join(head) + " |", rule, *("| " + " | ".join(r) + " |" for r in rows)])
