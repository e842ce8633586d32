"""A small reader of server-sent events for tests, independent of apbd's own code."""

from __future__ import annotations

from dataclasses import dataclass

import requests


@dataclass
class Event:
    event: str
    data: str
    id: str | None


def read_events(answer: requests.Response):
    """Yield the events of a text/event-stream response, splitting lines on LF only."""
    event, data, event_id, pending = "message", [], None, b""
    for chunk in answer.iter_content(chunk_size=None):
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for raw in lines:
            line = raw.decode("utf-8", errors="replace")
            if line.endswith("\r"):
                line = line[:-1]
            if line == "":
                if data:
                    yield Event(event, "\n".join(data), event_id)
                event, data = "message", []
                continue
            if line.startswith(":"):
                continue
            field, _, value = line.partition(":")
            if value.startswith(" "):
                value = value[1:]
            if field == "event":
                event = value
            elif field == "data":
                data.append(value)
            elif field == "id":
                event_id = value


def collect_until_complete(url: str, timeout: float = 120.0, headers: dict | None = None) -> list[Event]:
    """Open a stream and return its events up to and including the first `complete`."""
    events = []
    with requests.get(url, stream=True, timeout=(10, timeout), headers=headers or {}) as answer:
        assert answer.status_code == 200, f"GET {url}: HTTP {answer.status_code} {answer.text[:200]}"
        for event in read_events(answer):
            events.append(event)
            if event.event == "complete":
                break
    return events
