"""A bar chart of recent builds as inline SVG: one bar per build, height by duration.

The server draws it, so the index page needs no chart library and no script.
Bars run from the oldest build on the left to the newest on the right, each
coloured by its outcome and linked to its build page.
"""

from __future__ import annotations

import time

from markupsafe import Markup, escape

WIDTH = 720
HEIGHT = 140
# Space for the axis labels, in SVG user units.
LEFT_MARGIN = 72
BOTTOM_MARGIN = 18
TOP_MARGIN = 8
BAR_GAP = 3
# A bar never gets thinner or wider than these, so a long history stays
# readable and a short one does not fill the page with one bar.
MIN_BAR_WIDTH = 6
MAX_BAR_WIDTH = 28
# Narrowest chart, so the axis labels fit.
MIN_WIDTH = 260
# Height of a bar for a build without a duration (queued), so it stays clickable.
STUB_HEIGHT = 2

# One CSS class per outcome; www/static/style.css gives each its colour.
OUTCOME_CLASSES = {
    "completed": "bar-completed",
    "failed": "bar-failed",
    "cancelled": "bar-cancelled",
    "building": "bar-building",
    "queued": "bar-queued",
}


def format_duration(seconds: float | None) -> str:
    """Format seconds as "42 s", "3 min 5 s" or "2 h 7 min"; "–" when unknown."""
    if seconds is None:
        return "–"
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


def build_duration(build: dict, now: float | None = None) -> float | None:
    """Return a build's duration in seconds: the final one, or the time so far while building."""
    duration = build.get("duration")
    if isinstance(duration, (int, float)):
        return float(duration)
    start = build.get("start_time_unix")
    if build.get("status") == "building" and isinstance(start, (int, float)):
        return max(0.0, (now or time.time()) - start)
    return None


def render_duration_chart(builds: list[dict], now: float | None = None) -> Markup:
    """Draw builds (newest first, as the history lists them) as an SVG bar chart.

    Each build needs build_id, status and pkgname; duration (seconds) or,
    while building, start_time_unix gives the bar its height.
    """
    if not builds:
        return Markup('<p class="muted">No builds yet.</p>')
    ordered = list(reversed(builds))
    durations = [build_duration(b, now) for b in ordered]
    longest = max([d for d in durations if d is not None] + [1.0])

    plot_width = WIDTH - LEFT_MARGIN
    plot_height = HEIGHT - BOTTOM_MARGIN - TOP_MARGIN
    slot = min(MAX_BAR_WIDTH + BAR_GAP, max(MIN_BAR_WIDTH + BAR_GAP, plot_width / len(ordered)))
    width = max(MIN_WIDTH, int(LEFT_MARGIN + slot * len(ordered)))
    baseline = TOP_MARGIN + plot_height

    parts = [
        f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {HEIGHT}" '
        f'width="{width}" height="{HEIGHT}" role="img" '
        f'aria-label="Duration and outcome of the last {len(ordered)} builds">',
        f'<line class="axis" x1="{LEFT_MARGIN - 2}" y1="{TOP_MARGIN}" x2="{LEFT_MARGIN - 2}" y2="{baseline}"/>',
        f'<line class="axis" x1="{LEFT_MARGIN - 2}" y1="{baseline}" x2="{width}" y2="{baseline}"/>',
        f'<text class="label" x="{LEFT_MARGIN - 6}" y="{TOP_MARGIN + 10}" text-anchor="end">'
        f'{escape(format_duration(longest))}</text>',
        f'<text class="label" x="{LEFT_MARGIN - 6}" y="{baseline}" text-anchor="end">0</text>',
        f'<text class="label" x="{LEFT_MARGIN}" y="{HEIGHT - 4}">oldest</text>',
        f'<text class="label" x="{width}" y="{HEIGHT - 4}" text-anchor="end">newest</text>',
    ]
    for i, (build, duration) in enumerate(zip(ordered, durations)):
        height = STUB_HEIGHT if duration is None else max(STUB_HEIGHT, duration / longest * plot_height)
        x = LEFT_MARGIN + i * slot
        status = str(build.get("status", ""))
        css_class = OUTCOME_CLASSES.get(status, "bar-queued")
        title = f"{build.get('pkgname') or build.get('build_id')}: {status}, {format_duration(duration)}"
        parts.append(
            f'<a href="/build/{escape(build.get("build_id", ""))}">'
            f'<rect class="bar {css_class}" x="{x:.1f}" y="{baseline - height:.1f}" '
            f'width="{slot - BAR_GAP:.1f}" height="{height:.1f}"><title>{escape(title)}</title></rect></a>')
    parts.append("</svg>")
    return Markup("".join(parts))
