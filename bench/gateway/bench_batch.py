"""Batch throughput: lines per second one `domicile serve` worker runs through the Batch API
against the loopback fake upstream (target: at least 2,000 requests/s).

A throwaway site through the public CLI (the bench upstream added to region eu, a project
with regional retention and its key), `domicile serve --region eu` on core 1, the upstream
and this driver on core 0 (as `run.py`). The official SDK uploads a JSONL file of N chat
requests, creates the batch and polls it every 50 ms: the *run* rate is N over the time from
the first poll that sees it `in_progress` to the first that sees it `finalizing` or
`completed`; the *end-to-end* rate counts from `create` to `completed` (validation and the
output file included). The output file is read back and checked: N lines, each custom_id
once, every answer a 200.

    .venv/bin/python bench/gateway/bench_batch.py [--lines 20000]

Writes its section of bench/RESULTS.md (between `<!-- bench-batch:start/end -->`) and
bench/out/batch.json. Only 127.0.0.1 is contacted; every process started is stopped at the
end (by its own id), also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import signal
import sys
import tempfile
import time
import tomllib
from collections import Counter
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(ROOT))
from bench.gateway import run as gw  # noqa: E402
from bench.sections import write_section  # noqa: E402

TARGET_LINES_PER_S = 2000.0
POLL_S = 0.05
DEADLINE_S = 600.0


def site(tmp: Path, uport: int) -> tuple[Path, str, str]:
    """(config, eu base URL, key of a regional-retention project)."""
    env = gw.domicile_env()

    def cli(*args: str) -> dict[str, Any]:
        done = gw.run_cmd([str(gw.DOMICILE), *args], env=env, timeout=180)
        if done.returncode != 0:
            raise RuntimeError(f"`domicile {' '.join(args)}` failed: {done.stderr[-400:]}")
        return json.loads(done.stdout) if done.stdout.strip() else {}

    root = tmp / "site"
    cli("init", "--dir", str(root), "--port-base", str(gw.free_port(pair=True)), "--json")
    cfg = root / "domicile.toml"
    gw.insert_provider(cfg, uport)
    c = str(cfg)
    org = cli("org", "create", "--name", "Bench", "--json", "--config", c)["id"]
    project = cli("project", "create", "--org", org, "--name", "batch", "--region", "eu",
                  "--retention", "regional", "--json", "--config", c)["id"]
    key = cli("key", "create", "--project", project, "--json", "--config", c)["key"]
    port = int(str(tomllib.loads(cfg.read_text())["regions"]["eu"]["listen"]).rsplit(":", 1)[1])
    return cfg, f"http://127.0.0.1:{port}/v1", key


def measure(base: str, key: str, lines: int) -> dict[str, Any]:
    import openai

    client = openai.OpenAI(base_url=base, api_key=key, max_retries=0, timeout=120)
    body = b"".join(json.dumps({
        "custom_id": f"line-{i}", "method": "POST", "url": "/v1/chat/completions",
        "body": {"model": "bench-model", "messages": [{"role": "user", "content": f"q {i}"}]},
    }).encode() + b"\n" for i in range(lines))
    uploaded = client.files.create(file=("bench.jsonl", body), purpose="batch")
    created_at = time.perf_counter()
    batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                  completion_window="24h")
    seen: dict[str, float] = {}
    deadline = created_at + DEADLINE_S
    while batch.status not in ("completed", "failed", "cancelled", "expired"):
        if time.perf_counter() > deadline:
            raise RuntimeError(f"the batch is still {batch.status} after {DEADLINE_S} s")
        time.sleep(POLL_S)
        batch = client.batches.retrieve(batch.id)
        seen.setdefault(batch.status, time.perf_counter())
    ended = time.perf_counter()
    if batch.status != "completed" or batch.output_file_id is None:
        raise RuntimeError(f"the batch ended {batch.status}: {batch.errors}")
    started = seen.get("in_progress", created_at)
    run_end = min(seen.get("finalizing", ended), seen.get("completed", ended))
    output = client.files.content(batch.output_file_id).text.splitlines()
    ids = Counter(json.loads(line)["custom_id"] for line in output)
    statuses = Counter(json.loads(line)["response"]["status_code"] for line in output)
    counts = batch.request_counts
    return {
        "lines": lines, "input_bytes": len(body),
        "run_s": run_end - started, "end_to_end_s": ended - created_at,
        "run_lines_per_s": lines / max(run_end - started, 1e-9),
        "end_to_end_lines_per_s": lines / (ended - created_at),
        "output_lines": len(output), "distinct_custom_ids": len(ids),
        "statuses": {str(k): v for k, v in statuses.items()},
        "completed": counts.completed if counts else None,
        "failed": counts.failed if counts else None,
    }


def render(result: dict[str, Any], when: str) -> str:
    ok = result["run_lines_per_s"] >= TARGET_LINES_PER_S
    return (
        "## Batch\n\n"
        f"Written by `bench/gateway/bench_batch.py` on {when}. One `domicile serve --region "
        "eu` worker (core 1) runs a batch of "
        f"{result['lines']:,} chat requests against the loopback bench upstream (core 0, "
        "with the driver); the SDK polls every 50 ms. *Run*: from the first poll seeing "
        "`in_progress` to the first seeing `finalizing`/`completed`; *end to end*: `create` "
        "to `completed` (validation and the sealed output file included).\n\n"
        "| lines | run s | run lines/s | end-to-end s | end-to-end lines/s | output lines "
        "(distinct ids) | answers |\n|---:|---:|---:|---:|---:|---:|---|\n"
        f"| {result['lines']:,} | {result['run_s']:.2f} | {result['run_lines_per_s']:,.0f} | "
        f"{result['end_to_end_s']:.2f} | {result['end_to_end_lines_per_s']:,.0f} | "
        f"{result['output_lines']:,} ({result['distinct_custom_ids']:,}) | "
        f"{', '.join(f'{k}: {v:,}' for k, v in result['statuses'].items())} |\n\n"
        f"| target | measured | result |\n|---|---:|---|\n"
        f"| batch throughput >= {TARGET_LINES_PER_S:,.0f} requests/s on one worker | "
        f"{result['run_lines_per_s']:,.0f} /s | **{'PASS' if ok else 'FAIL'}** |\n\n"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=20_000)
    parser.add_argument("--no-write", action="store_true", help="do not touch RESULTS.md")
    parser.add_argument("--profile", action="store_true",
                        help="run the server under pyinstrument (bench/out/profile-batch.txt); "
                        "nothing written to RESULTS.md")
    args = parser.parse_args()
    gw.OUT.mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGTERM, gw._on_signal)
    try:
        with tempfile.TemporaryDirectory(prefix="domicile-bench-batch-") as tmp:
            upstream, uport = gw.start_upstream()
            cfg, base, key = site(Path(tmp), uport)
            server = gw.Contender("domicile", base=base, key=key)
            profile = gw.OUT / "profile-batch.txt"
            prefix = [str(gw.MAIN_PY), "-m", "pyinstrument", "--interval", "0.0005", "-r",
                      "text", "--show-all", "-o", str(profile)] if args.profile else None
            gw.start_domicile(server, cfg, name="domicile-batch", prefix=prefix)
            gw.log(f"batch of {args.lines:,} lines")
            result = measure(base, key, args.lines)
            gw.log(f"run {result['run_lines_per_s']:,.0f} lines/s, end to end "
                   f"{result['end_to_end_lines_per_s']:,.0f} lines/s")
            if server.proc is not None:  # SIGINT: pyinstrument writes its report
                server.proc.stop(sig=signal.SIGINT if args.profile else signal.SIGTERM,
                                 grace=60)
            upstream.stop()
    finally:
        gw.Proc.stop_all()
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    (gw.OUT / "batch.json").write_text(json.dumps({"at": when, **result}, indent=2))
    if result["distinct_custom_ids"] != args.lines or result["output_lines"] != args.lines:
        gw.log("the output file does not hold every line once")
        return 1
    if not (args.no_write or args.profile):
        write_section("bench-batch", render(result, when))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.exit(main())
