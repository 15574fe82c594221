"""Summarise a pyinstrument session: where the busy time goes, as JSON on stdout.

Usage: python profile_summary.py SESSION.pyisession

- only the request path counts: frames under the event loop (asyncio ``Runner.run``)
  except start-up/shutdown coroutines (``_serve_regions``, lifespan); imports, the CLI
  and migrations before the loop starts are left out (reported as ``startup_s``);
- idle: wall time minus CPU time (waiting in epoll); the rest of the event loop frame's
  self time is uvloop's C work, reported as its own component;
- groups: self time by component (domicile subpackage, library, stdlib, ...);
- top_self: functions by self time; domicile_inclusive: domicile functions by
  inclusive time (counted once per call stack, so recursion does not double count).
Shares are of the busy (non-idle) time, i.e. roughly of the process's CPU time.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from typing import Any

from pyinstrument.session import Session

# Coroutines/functions under the event loop that are start-up or shutdown, not requests.
NOT_REQUEST_PATH = {"_serve_regions", "startup", "shutdown", "lifespan", "main", "serve"}


def where(path: str | None) -> tuple[str, str]:
    """(group, short location) for a frame's file path."""
    if not path:
        return "builtins / C functions called from Python", "?"
    p = path.replace("\\", "/")
    if "/src/domicile/" in p or "/site-packages/domicile/" in p:
        rel = p.split("/domicile/", 1)[1]
        sub = rel.split("/", 1)[0].removesuffix(".py")
        return f"domicile.{sub}", "domicile/" + rel
    if "/site-packages/" in p:
        rel = p.split("/site-packages/", 1)[1]
        top = rel.split("/", 1)[0].removesuffix(".py")
        return top, rel
    if "/lib/python3" in p:
        rel = (
            p.split("/lib/python3", 1)[1].split("/", 1)[1]
            if "/" in p.split("/lib/python3", 1)[1]
            else p
        )
        top = rel.split("/", 1)[0].removesuffix(".py")
        return f"stdlib {top}", rel
    if p.startswith("<"):
        return "builtins / C functions called from Python", p
    return "other", p.rsplit("/", 2)[-1]


def find_loop(root: Any) -> Any | None:
    """The asyncio Runner.run frame (uvloop's callbacks hang under it), else None."""
    stack = [root]
    count = 0
    while stack and count < 5_000_000:  # bounded walk
        count += 1
        f = stack.pop()
        if f.function == "run" and f.class_name == "Runner":
            return f
        stack.extend(f.children)
    return None


def label(frame: Any) -> str:
    cls = frame.class_name
    return f"{cls}.{frame.function}" if cls else (frame.function or "?")


def main() -> None:
    session = Session.load(sys.argv[1])
    root = session.root_frame(trim_stem=False)
    if root is None:
        print(json.dumps({"error": "empty profile"}))
        return
    loop = find_loop(root)
    if loop is None:
        print(json.dumps({"error": "no asyncio Runner.run frame in the profile"}))
        return
    wall_total = root.time
    cpu_total = float(getattr(session, "cpu_time", 0.0) or 0.0) or wall_total
    # Outside the loop (imports, CLI, migrations) everything is CPU: the process's only
    # idle time is the wait in epoll, inside the loop frame's own self time.
    outside = wall_total - loop.time
    loop_self = loop.total_self_time
    idle = max(0.0, min(loop_self, wall_total - cpu_total))
    loop_c = loop_self - idle

    self_by_func: dict[tuple[str, str], float] = defaultdict(float)
    self_by_group: dict[str, float] = defaultdict(float)
    incl_domicile: dict[tuple[str, str], float] = defaultdict(float)
    startup_in_loop = 0.0
    stack: list[tuple[Any, frozenset[tuple[str, str]]]] = [(c, frozenset()) for c in loop.children]
    count = 0
    while stack and count < 5_000_000:  # bounded walk
        count += 1
        frame, seen = stack.pop()
        if frame.is_synthetic:  # "[self]"/"[await]" leaves: already in total_self_time
            continue
        if frame.parent is loop and frame.function in NOT_REQUEST_PATH:
            startup_in_loop += frame.time
            continue
        group, loc = where(frame.file_path)
        key = (label(frame), f"{loc}:{frame.line_no or ''}")
        self_t = frame.total_self_time
        self_by_func[key] += self_t
        self_by_group[group] += self_t
        if group.startswith("domicile") and key not in seen:
            incl_domicile[key] += frame.time
            seen = seen | {key}
        for child in frame.children:
            stack.append((child, seen))
    self_by_group["event loop C code (uvloop: epoll, socket I/O, scheduling)"] += loop_c
    busy = max(sum(self_by_group.values()), 1e-9)

    def rows(d: dict[tuple[str, str], float], n: int) -> list[dict[str, Any]]:
        items = sorted(d.items(), key=lambda kv: kv[1], reverse=True)[:n]
        return [
            {"function": f, "where": w, "seconds": round(t, 4), "share": t / busy}
            for (f, w), t in items
        ]

    out = {
        "total_s": wall_total,
        "cpu_s": cpu_total,
        "startup_s": outside + startup_in_loop,
        "idle_s": idle,
        "idle_share": idle / wall_total if wall_total else 0.0,
        "busy_s": busy,
        "groups": [
            {"group": g, "seconds": round(t, 4), "share": t / busy}
            for g, t in sorted(self_by_group.items(), key=lambda kv: kv[1], reverse=True)
        ],
        "top_self": rows(self_by_func, 30),
        "domicile_inclusive": rows(incl_domicile, 25),
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
