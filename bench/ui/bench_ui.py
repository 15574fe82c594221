"""Web UI time budget, measured in the browser: Debian's Chromium (Playwright) against a real
`domicile serve` on loopback, in front of a loopback fake upstream (tests/gateway/upstream.py).

    .venv/bin/python bench/ui/bench_ui.py [--iterations 30] [--no-write] [--json]

1. **chat view interactive** (budget < 300 ms): a signed-in member opens `/workspace/`; from
   the navigation's start to the moment `#composer` is there and enabled with the page's
   scripts run (`max(composer enabled, domContentLoadedEventEnd)`: deferred scripts have run
   by then). Navigation Timing's `domInteractive` and `loadEventEnd` are reported beside it.
2. **first token painted** (budget < 50 ms): the fake upstream sends the reply's first chunk
   and then waits at a gate; the upstream notes the wall-clock time it wrote that chunk, the
   page notes (wall clock: `performance.timeOrigin + performance.now()`, same machine) the
   `requestAnimationFrame` after the chunk's text appears in the new assistant message: the
   frame that paints it. Then the gate opens and the reply completes.

The numbers are written between `<!-- bench-ui:start -->` and `<!-- bench-ui:end -->` in
bench/RESULTS.md (the rest of the file is kept) and raw to bench/out/ui.json. This is a
measurement, not a test: it never fails on time; it says whether each budget was met.
Only 127.0.0.1 is contacted; every process started here is stopped at the end.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
BENCH = HERE.parent
ROOT = BENCH.parent
OUT = BENCH / "out"
sys.path.insert(0, str(ROOT))  # tests.ui.conftest, tests.gateway.upstream

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from aiohttp import web  # noqa: E402
from bench.sections import RESULTS_MD, write_section  # noqa: E402
from playwright.sync_api import Page, sync_playwright  # noqa: E402
from tests.gateway.support import LoopThread  # noqa: E402
from tests.gateway.upstream import FakeUpstream  # noqa: E402
from tests.ui.conftest import (  # noqa: E402
    CHROMIUM,
    CHROMIUM_ARGS,
    DESKTOP,
    PASSWORD,
    UPSTREAM_MODEL,
    make_member,
    serve_site,
)

INTERACTIVE_BUDGET_MS = 300.0
FIRST_TOKEN_BUDGET_MS = 50.0
MARKER = "ui-up"  # the fake upstream's first chunk is its name

# Runs before the page's own scripts: notes when #composer is there and enabled.
WATCH_COMPOSER = """
(() => {
  const check = () => {
    const composer = document.getElementById('composer');
    if (composer && !composer.disabled && window.__composerReady === undefined) {
      window.__composerReady = performance.now();
    }
  };
  new MutationObserver(check).observe(document, {subtree: true, childList: true,
                                                 attributes: true, attributeFilter: ['disabled']});
  document.addEventListener('DOMContentLoaded', check);
})();
"""

# Installed before a message is sent: the wall-clock time of the frame that paints the reply's
# first text (`baseline` assistant messages were there before).
WATCH_FIRST_TOKEN = """
(args) => {
  const [baseline, marker] = args;
  window.__firstToken = undefined;
  const seen = () => {
    const replies = document.querySelectorAll(
      '#messages article.message[data-role="assistant"]');
    if (replies.length <= baseline) return false;
    const content = replies[replies.length - 1].querySelector('.content');
    return !!content && content.textContent.includes(marker);
  };
  const observer = new MutationObserver(() => {
    if (!seen()) return;
    observer.disconnect();
    const inDom = performance.timeOrigin + performance.now();
    requestAnimationFrame(() => {
      window.__firstToken = {dom: inDom, frame: performance.timeOrigin + performance.now()};
    });
  });
  observer.observe(document.getElementById('messages'),
                   {subtree: true, childList: true, characterData: true});
}
"""


@dataclass
class TimedUpstream(FakeUpstream):
    """The fake upstream, noting the wall-clock time (ms) each stream's first chunk went out."""

    first_chunk_ms: list[float] = field(default_factory=list)

    async def _send(self, response: web.StreamResponse, chunk: bytes) -> None:
        await super()._send(response, chunk)
        if b'"role": "assistant"' in chunk:  # a stream's first chunk
            self.first_chunk_ms.append(time.time() * 1000)


def log(message: str) -> None:
    print(f"[bench-ui] {message}", file=sys.stderr, flush=True)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def summary(values: list[float]) -> dict[str, float]:
    return {"n": len(values), "p50": statistics.median(values), "p95": percentile(values, 95),
            "max": max(values), "min": min(values)}


def open_chat(page: Page, url: str) -> dict[str, float]:
    page.goto(url)
    page.wait_for_function("() => window.__composerReady !== undefined")
    page.wait_for_load_state("load")
    timing = page.evaluate("""() => {
      const nav = performance.getEntriesByType('navigation')[0];
      return {composer: window.__composerReady, dom_interactive: nav.domInteractive,
              dom_content_loaded: nav.domContentLoadedEventEnd, load: nav.loadEventEnd};
    }""")
    timing["interactive"] = max(timing["composer"], timing["dom_content_loaded"])
    return {key: float(value) for key, value in timing.items()}


def first_token(page: Page, upstream: TimedUpstream) -> dict[str, float]:
    gate = threading.Event()
    upstream.behaviour.gate = gate
    upstream.first_chunk_ms.clear()
    replies = page.locator('#messages article.message[data-role="assistant"]')
    page.evaluate(WATCH_FIRST_TOKEN, [replies.count(), MARKER])
    page.select_option("#model", UPSTREAM_MODEL)
    page.fill("#composer", "how fast is the first word")
    page.press("#composer", "Enter")
    try:
        try:
            page.wait_for_function("() => window.__firstToken !== undefined", timeout=20_000)
        except Exception:
            log(f"no first token seen; the page shows: {page.inner_text('#messages')!r}, "
                f"upstream chunks sent: {upstream.chunks_sent}")
            raise
        painted = page.evaluate("() => window.__firstToken")
    finally:
        gate.set()
    page.wait_for_function("""() => {
      const replies = document.querySelectorAll(
        '#messages article.message[data-role="assistant"]');
      return replies.length && replies[replies.length - 1].dataset.status === 'complete';
    }""", timeout=20_000)
    sent = upstream.first_chunk_ms[0]
    return {"to_dom": painted["dom"] - sent, "to_frame": painted["frame"] - sent}


def run(iterations: int) -> dict[str, Any]:
    loop = LoopThread()
    upstream = TimedUpstream("ui-up")
    loop.run(upstream.start())
    workdir = Path(tempfile.mkdtemp(prefix="bench-ui-"))
    site, server, workspace = serve_site(workdir, upstream)
    member = make_member(site, workspace, "owner")
    base = site.url("eu")
    interactive: list[dict[str, float]] = []
    tokens: list[dict[str, float]] = []
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM),
                                                 args=CHROMIUM_ARGS)
            version = browser.version
            context = browser.new_context(viewport=DESKTOP)
            context.add_init_script(WATCH_COMPOSER)
            answer = context.request.post(
                base + "/workspace/api/login", headers={"origin": base},
                data={"email": member.email, "password": PASSWORD})
            assert answer.ok, answer.text()
            page = context.new_page()
            warmup = 3
            for i in range(warmup + iterations):
                opened = open_chat(page, base + "/workspace/")
                measured = first_token(page, upstream)
                if i >= warmup:
                    interactive.append(opened)
                    tokens.append(measured)
            browser.close()
    finally:
        server.stop()
        loop.run(upstream.stop())
        loop.close()
    return {
        "when": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "iterations": iterations,
        "chromium": version,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python "
                   f"{platform.python_version()}",
        "interactive": {key: summary([t[key] for t in interactive])
                        for key in ("interactive", "composer", "dom_interactive",
                                    "dom_content_loaded", "load")},
        "first_token": {key: summary([t[key] for t in tokens]) for key in ("to_dom", "to_frame")},
    }


def section(results: dict[str, Any]) -> str:
    inter = results["interactive"]
    token = results["first_token"]

    def row(label: str, stats: dict[str, float], budget: float | None = None) -> str:
        verdict = "" if budget is None else (
            "met" if stats["p95"] < budget else "**missed**")
        return (f"| {label} | {stats['p50']:.1f} | {stats['p95']:.1f} | {stats['max']:.1f} | "
                f"{'' if budget is None else f'< {budget:.0f}'} | {verdict} |")

    lines = [
        "# Web UI: time budget in the browser", "",
        f"Written by `bench/ui/bench_ui.py` (`make bench-ui`) on {results['when']}: Chromium "
        f"{results['chromium']} (headless, Debian) against `domicile serve` on loopback, "
        f"{results['iterations']} iterations after 3 warm-up ones; {results['machine']}. "
        "A budget is met when the p95 is under it.", "",
        "- **Chat view interactive**: from the navigation's start to `#composer` there and "
        "enabled with the page's scripts run (the later of that and "
        "`domContentLoadedEventEnd`); Navigation Timing beside it.",
        "- **First token painted**: from the loopback fake upstream writing the reply's first "
        "chunk (it then waits at a gate) to the `requestAnimationFrame` after that text is in "
        "the new assistant message (the frame that paints it); *to DOM* is when it was "
        "inserted. Both clocks are this machine's wall clock.", "",
        "| measure | p50 ms | p95 ms | max ms | budget ms | |",
        "|---|---:|---:|---:|---:|---|",
        row("chat view interactive", inter["interactive"], INTERACTIVE_BUDGET_MS),
        row("  `#composer` enabled", inter["composer"]),
        row("  domInteractive", inter["dom_interactive"]),
        row("  domContentLoadedEventEnd", inter["dom_content_loaded"]),
        row("  loadEventEnd", inter["load"]),
        row("first token painted (upstream sent → frame)", token["to_frame"],
            FIRST_TOKEN_BUDGET_MS),
        row("  upstream sent → in the DOM", token["to_dom"]),
        "", "Raw data: `bench/out/ui.json`.", "",
    ]
    return "\n".join(lines)


def write_results(results: dict[str, Any]) -> None:
    write_section("bench-ui", section(results))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=30)
    parser.add_argument("--no-write", action="store_true", help="do not touch RESULTS.md")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args()
    if not CHROMIUM.exists():
        sys.exit(f"{CHROMIUM} is missing: `apt-get install chromium` (make install-test)")
    results = run(args.iterations)
    OUT.mkdir(exist_ok=True)
    (OUT / "ui.json").write_text(json.dumps(results, indent=2))
    if not args.no_write:
        write_results(results)
        log(f"wrote {RESULTS_MD}")
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print(section(results))


if __name__ == "__main__":
    main()
