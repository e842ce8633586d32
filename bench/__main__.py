"""Run the apbd benchmark suite and print the table: `python -m bench [--smoke] [--only NAME]`."""

from __future__ import annotations

import argparse
import logging
import os
import platform
import subprocess
import sys
import time
import traceback

from bench import report
from bench.context import Context, make_root
from bench import (fig_pickup, fig_overhead, fig_index, fig_status_api, fig_history, fig_followers,
                   fig_upload, fig_download, fig_loud, fig_many)

# Each module measures some figures; ROWS names them with their goals, so a
# module that fails still gets one error row per figure in the table.
MODULES = {
    "pickup": fig_pickup,
    "overhead": fig_overhead,
    "index": fig_index,
    "status-api": fig_status_api,
    "history": fig_history,
    "followers": fig_followers,
    "upload": fig_upload,
    "download": fig_download,
    "loud": fig_loud,
    "many": fig_many,
}


def machine_line(start_load: float) -> str:
    """Return where the suite ran: cores, CPU model, kernel, Python, UTC date and load average."""
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    date = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    return (f"{os.cpu_count()} cores, {model}, Linux {platform.release()}, "
            f"Python {platform.python_version()}, {date}, 1-minute load average {start_load:.1f} at the start "
            f"and {os.getloadavg()[0]:.1f} at the end")


def run_module(name: str, module, ctx: Context) -> list[report.Row]:
    ctx.say(f"{name}: start")
    started = time.monotonic()
    try:
        rows = module.run(ctx)
    except Exception as e:  # one broken figure must not hide the others
        traceback.print_exc(file=sys.stderr)
        rows = [report.error_row(figure, goal, f"{type(e).__name__}: {e}".splitlines()[0][:300])
                for figure, goal in module.ROWS]
    ctx.say(f"{name}: done in {time.monotonic() - started:.1f} s")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--smoke", action="store_true",
                        help="tiny sizes, to prove the suite runs (the figures mean nothing)")
    parser.add_argument("--only", action="append", choices=sorted(MODULES), metavar="NAME",
                        help=f"run only this benchmark (repeatable): {', '.join(MODULES)}")
    parser.add_argument("--markdown", metavar="FILE", help="also write the table as Markdown to FILE")
    parser.add_argument("--tmp", metavar="DIR", help="parent folder of the temporary spools (default: $TMPDIR)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder and the server logs")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    start_load = os.getloadavg()[0]
    ctx = Context(smoke=args.smoke, root=make_root(args.tmp), keep=args.keep)
    ctx.say(f"temporary folder {ctx.root}")
    rows: list[report.Row] = []
    try:
        for name in args.only or MODULES:
            rows += run_module(name, MODULES[name], ctx)

        machine = machine_line(start_load)
        print(f"apbd benchmarks{' (smoke: tiny sizes, figures not meaningful)' if args.smoke else ''}")
        print(f"machine: {machine}")
        print(report.format_text(rows), flush=True)
        if args.markdown:
            with open(args.markdown, "w") as f:
                f.write(f"Machine: {machine}\n\n{report.format_markdown(rows)}\n")
    finally:
        if not args.keep:
            ctx.say(f"removing {ctx.root}")
            # The table is printed first: removing the history figure's 100,000 job folders takes a while.
            subprocess.run(["rm", "-rf", "--one-file-system", str(ctx.root)], check=False)
    return 0 if all(r.passed is not None for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
