// The build page: live output over server-sent events, and status updates.
//
// Lines are queued as events arrive and appended once per animation frame in
// a DocumentFragment, and the page keeps at most MAX_LINES of them, so a
// 200,000-line log never freezes the browser. Text is set with textContent,
// never as HTML, so a log line cannot inject markup.
"use strict";

(function () {
  const root = document.getElementById("build");
  if (!root) {
    return;
  }
  const buildId = root.dataset.buildId;
  const logBox = document.getElementById("log");
  const follow = document.getElementById("follow");
  const stateLabel = document.getElementById("log-state");
  const countLabel = document.getElementById("log-count");
  const trimmedNotice = document.getElementById("log-trimmed");

  const MAX_LINES = 5000;
  const LINES_PER_FRAME = 2000;
  // Characters of one line shown; the whole line stays in the log file.
  const MAX_LINE_CHARS = 10000;
  const RETRY_MS = 5000;
  const TERMINAL = ["completed", "failed", "cancelled"];
  const ANSI_ESCAPE = /\x1b\[[0-?]*[ -\/]*[@-~]|\x1b[@-_]/g;
  const CONTROL_CHARS = /[\x00-\x08\x0b-\x1f\x7f]/g;

  let pending = [];
  let received = 0;
  let trimmed = 0;
  let frameRequested = false;
  let lastEventId = 0;
  let finished = false;
  let source = null;

  function visible(text) {
    return text.replace(ANSI_ESCAPE, "").replace(CONTROL_CHARS, (c) =>
      c === "\x7f" ? "\u2421" : String.fromCharCode(0x2400 + c.charCodeAt(0)));
  }

  // makepkg marks steps with "==>" and sub-steps with "  ->".
  function lineClass(text) {
    if (text.startsWith("==> ERROR")) {
      return "line error";
    }
    if (text.startsWith("==> WARNING")) {
      return "line warning";
    }
    if (text.startsWith("==>")) {
      return "line step";
    }
    if (text.startsWith("  ->")) {
      return "line substep";
    }
    return "line";
  }

  function makeLine(raw) {
    let text = visible(raw);
    if (text.length > MAX_LINE_CHARS) {
      text = text.slice(0, MAX_LINE_CHARS) + ` … (${text.length - MAX_LINE_CHARS} more characters in the whole log)`;
    }
    const div = document.createElement("div");
    div.className = lineClass(text);
    div.textContent = text;
    return div;
  }

  function appendPending() {
    frameRequested = false;
    // Lines that would be trimmed right away are never put in the page.
    if (pending.length > MAX_LINES) {
      trimmed += pending.length - MAX_LINES + logBox.childElementCount;
      pending = pending.slice(pending.length - MAX_LINES);
      logBox.textContent = "";
    }
    const batch = pending.splice(0, LINES_PER_FRAME);
    const fragment = document.createDocumentFragment();
    for (const raw of batch) {
      fragment.appendChild(makeLine(raw));
    }
    logBox.appendChild(fragment);
    let excess = logBox.childElementCount - MAX_LINES;
    while (excess > 0) {
      logBox.firstChild.remove();
      trimmed += 1;
      excess -= 1;
    }
    if (trimmed > 0) {
      trimmedNotice.hidden = false;
      trimmedNotice.textContent = `The first ${trimmed} lines are not shown here; read them in the whole log.`;
    }
    countLabel.textContent = `${received} lines`;
    if (follow.checked) {
      logBox.scrollTop = logBox.scrollHeight;
    }
    if (pending.length > 0) {
      requestFrame();
    }
  }

  function requestFrame() {
    if (!frameRequested) {
      frameRequested = true;
      window.requestAnimationFrame(appendPending);
    }
  }

  // Scrolling up stops following the end; scrolling back down resumes it.
  logBox.addEventListener("scroll", () => {
    follow.checked = logBox.scrollTop + logBox.clientHeight >= logBox.scrollHeight - 30;
  });

  function setStatus(status) {
    const badge = document.getElementById("status");
    badge.textContent = status;
    badge.className = `badge status-${status}`;
    root.dataset.status = status;
    if (TERMINAL.includes(status)) {
      const cancelBox = document.getElementById("cancel-box");
      if (cancelBox) {
        cancelBox.remove();
      }
    }
  }

  function formatDuration(seconds) {
    if (typeof seconds !== "number") {
      return "–";
    }
    let rest = Math.max(0, Math.round(seconds));
    if (rest < 60) {
      return `${rest} s`;
    }
    const s = rest % 60;
    rest = Math.floor(rest / 60);
    if (rest < 60) {
      return `${rest} min ${s} s`;
    }
    return `${Math.floor(rest / 60)} h ${rest % 60} min`;
  }

  function formatTime(value) {
    if (value === undefined || value === null || value === "") {
      return "–";
    }
    const date = typeof value === "number" ? new Date(value * 1000) : new Date(value);
    if (Number.isNaN(date.getTime())) {
      return String(value);
    }
    return date.toISOString().replace("T", " ").slice(0, 19) + " UTC";
  }

  function formatSize(size) {
    if (typeof size !== "number") {
      return "–";
    }
    const units = ["B", "KiB", "MiB", "GiB"];
    let unit = 0;
    while (size >= 1024 && unit < units.length - 1) {
      size /= 1024;
      unit += 1;
    }
    return unit === 0 ? `${size} B` : `${size.toFixed(1)} ${units[unit]}`;
  }

  // On every state change, fetch the build's JSON to show its timing and packages.
  async function refreshDetails() {
    const response = await fetch(`/build/${encodeURIComponent(buildId)}`, {headers: {Accept: "application/json"}});
    if (!response.ok) {
      return;
    }
    const info = await response.json();
    document.getElementById("start-time").textContent = formatTime(info.start_time);
    document.getElementById("end-time").textContent = formatTime(info.end_time);
    document.getElementById("duration").textContent = formatDuration(info.duration);
    document.getElementById("exit-code").textContent = info.exit_code === undefined ? "–" : String(info.exit_code);
    const packages = info.packages || [];
    const placeholder = document.getElementById("no-packages");
    if (packages.length > 0 && placeholder) {
      const table = document.createElement("table");
      table.className = "files";
      table.id = "packages";
      const body = table.createTBody();
      for (const item of packages) {
        const row = body.insertRow();
        const link = document.createElement("a");
        link.href = item.download_url;
        link.textContent = item.filename;
        row.insertCell().appendChild(link);
        row.insertCell().textContent = formatSize(item.size);
      }
      placeholder.replaceWith(table);
    }
  }

  function connect() {
    const url = `/build/${encodeURIComponent(buildId)}/stream` + (lastEventId > 0 ? `?last_event_id=${lastEventId}` : "");
    source = new EventSource(url);
    source.onopen = () => {
      stateLabel.textContent = "live";
    };
    source.addEventListener("output", (event) => {
      lastEventId = Number(event.lastEventId) || lastEventId;
      pending.push(event.data);
      received += 1;
      requestFrame();
    });
    source.addEventListener("status", (event) => {
      setStatus(JSON.parse(event.data).status);
      refreshDetails().catch((error) => console.warn("could not refresh the build details:", error));
    });
    source.addEventListener("heartbeat", () => {
      stateLabel.textContent = "live";
    });
    source.addEventListener("complete", (event) => {
      const result = JSON.parse(event.data);
      finished = true;
      source.close();
      setStatus(result.status);
      const exit = result.exit_code === null || result.exit_code === undefined ? "" : `, exit code ${result.exit_code}`;
      stateLabel.textContent = `finished: ${result.status}${exit}`;
      refreshDetails().catch((error) => console.warn("could not refresh the build details:", error));
    });
    source.onerror = () => {
      if (finished) {
        return;
      }
      if (source.readyState === EventSource.CLOSED) {
        // The server rejected the stream (404, or 503 when every stream slot is taken).
        stateLabel.textContent = "disconnected, retrying…";
        window.setTimeout(connect, RETRY_MS);
      } else {
        stateLabel.textContent = "reconnecting…";
      }
    };
  }

  connect();
})();
