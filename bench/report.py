"""Rows of the benchmark table and how they are printed."""

from __future__ import annotations

from dataclasses import dataclass

PASS = "pass"
MISS = "miss"
ERROR = "error"
HEADER = ("figure", "apbd", "floor", "ratio", "goal", "pass/miss")


@dataclass
class Row:
    """One line of the table: a figure, apbd's value, the floor's, their ratio, the goal and the verdict.

    passed is None when the benchmark could not measure the figure; note then explains why.
    """

    figure: str
    apbd: str
    floor: str
    ratio: str
    goal: str
    passed: bool | None
    note: str = ""

    @property
    def verdict(self) -> str:
        if self.passed is None:
            return ERROR
        return PASS if self.passed else MISS

    def cells(self) -> tuple[str, ...]:
        return (self.figure, self.apbd, self.floor, self.ratio, self.goal, self.verdict)


def error_row(figure: str, goal: str, why: str) -> Row:
    return Row(figure, "-", "-", "-", goal, None, why)


def fmt_ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def fmt_s(seconds: float) -> str:
    return f"{seconds:.2f} s"


def fmt_mb(size: float) -> str:
    return f"{size / 1e6:.1f} MB"


def fmt_rate(bytes_per_s: float) -> str:
    return f"{bytes_per_s / 1e6:.0f} MB/s"


def fmt_ratio(apbd: float, floor: float) -> str:
    if not floor:
        return "-"
    return f"{apbd / floor:.2f}x"


def format_text(rows: list[Row]) -> str:
    """Return the table as aligned plain text, with the notes below it."""
    table = [HEADER] + [r.cells() for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(HEADER))]
    lines = []
    for n, line in enumerate(table):
        lines.append(" | ".join(cell.ljust(widths[i]) for i, cell in enumerate(line)).rstrip())
        if n == 0:
            lines.append("-+-".join("-" * w for w in widths))
    notes = [f"- {r.figure}: {r.note}" for r in rows if r.note]
    if notes:
        lines += ["", "notes:"] + notes
    return "\n".join(lines)


def format_markdown(rows: list[Row]) -> str:
    """Return the table as a Markdown table, with the notes as a list below it."""
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    for r in rows:
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in r.cells()) + " |")
    notes = [f"- **{r.figure}**: {r.note}" for r in rows if r.note]
    if notes:
        lines += [""] + notes
    return "\n".join(lines)
