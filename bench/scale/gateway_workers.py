"""Gateway throughput with 1 and 2 worker processes on one region, in one run (issue 10).

    .venv/bin/python bench/scale/gateway_workers.py [--quick] [--duration S] [--connections N]

The same loopback upstream (bench/gateway/upstream.py), the same site and key, non-streaming
chat completions driven by wrk (bench/gateway/post.lua): first `domicile serve --workers 1`,
then `--workers 2`. Writes the `scale-gateway` section of bench/RESULTS.md.

The target (2 workers at least 1.7x one) needs cores for the workers *and* for the load: the
upstream and wrk run on core 0, the gateway's workers on the other cores. With fewer than 4
cores the ratio is reported, not judged.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench" / "gateway"))

from bench.sections import write_section  # noqa: E402
from run import (  # noqa: E402 - bench/gateway/run.py: one harness for every gateway bench
    CORE_LOAD,
    DOMICILE,
    OUT,
    Contender,
    Proc,
    domicile_env,
    domicile_site,
    log,
    sanity,
    start_upstream,
    wait_ready,
    wrk,
)

TARGET_RATIO = 1.7
CORES_FOR_TARGET = 4


def gateway_cores() -> str:
    """Every core but the load's (core 0), or all of them on a 1-core machine."""
    cores = sorted(os.sched_getaffinity(0))
    rest = [c for c in cores if str(c) != CORE_LOAD]
    return ",".join(map(str, rest or cores))


def serve(c: Contender, cfg: Path, workers: int) -> None:
    argv = ["taskset", "-c", gateway_cores(), str(DOMICILE), "serve", "--region", "eu",
            "--config", str(cfg), "--workers", str(workers)]
    c.proc = Proc(f"domicile-{workers}w", argv, env=domicile_env(), cwd=cfg.parent)
    why = wait_ready(c.proc, c.base.removesuffix("/v1") + "/healthz", None, 90)
    if why:
        raise RuntimeError(f"`domicile serve --workers {workers}` did not come up: {why}\n"
                           f"{c.proc.tail()}")


def measure(cfg: Path, base: str, key: str, workers: int,
            args: argparse.Namespace) -> dict[str, Any]:
    c = Contender(f"domicile-{workers}w", base=base, key=key)
    serve(c, cfg, workers)
    try:
        problem = sanity(base, key)
        if problem:
            raise RuntimeError(problem)
        log(f"{workers} worker(s): wrk -c{args.connections}, {args.wrk_warmup} s warm-up + "
            f"{args.wrk_duration} s")
        result = wrk(c, args)
    finally:
        assert c.proc is not None
        c.proc.stop()
    if "fatal" in result:
        raise RuntimeError(result["fatal"])
    return result


def render(one: dict[str, Any], two: dict[str, Any], args: argparse.Namespace) -> str:
    cores = os.cpu_count() or 1
    ratio = two["rps"] / one["rps"]
    judged = cores >= CORES_FOR_TARGET
    verdict = (("PASS" if ratio >= TARGET_RATIO else "FAIL") if judged else
               f"not judged: {cores} cores (the target needs >= {CORES_FOR_TARGET}: "
               "the workers' cores plus the upstream's and wrk's)")
    rows = []
    for name, r in (("1 worker", one), ("2 workers", two)):
        rows.append(f"| {name} | {r['rps']:,.0f} | {r['lat_p50_us'] / 1000:.2f} | "
                    f"{r['lat_p99_us'] / 1000:.2f} | {r.get('gateway_cpu_pct', 0):.0f}% | "
                    f"{r['errors']} |")
    return "\n".join([
        "## Scale: gateway workers on one region (`bench/scale/gateway_workers.py`)",
        "",
        f"- Machine: {platform.machine()}, {cores} cores, Python {platform.python_version()}; "
        f"upstream and wrk pinned to core {CORE_LOAD}, the gateway's workers to cores "
        f"{gateway_cores()}.",
        f"- Load: `wrk -t1 -c{args.connections}`, non-streaming chat completions, "
        f"{args.wrk_warmup} s warm-up then {args.wrk_duration} s, for each worker count.",
        "",
        "| workers | req/s | p50 ms | p99 ms | gateway CPU | errors |",
        "|---|---|---|---|---|---|",
        *rows,
        "",
        f"**2 workers / 1 worker: {ratio:.2f}x** (target {TARGET_RATIO}x): {verdict}.",
        "",
    ])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", dest="wrk_duration", type=int, default=15)
    parser.add_argument("--warmup", dest="wrk_warmup", type=int, default=3)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--quick", action="store_true", help="a 5 s smoke run, not written")
    args = parser.parse_args()
    if args.quick:
        args.wrk_duration, args.wrk_warmup = 5, 1
    OUT.mkdir(parents=True, exist_ok=True)
    upstream, port = start_upstream()
    try:
        with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
            cfg, base, key = domicile_site(Path(tmp), port)
            one = measure(cfg, base, key, 1, args)
            two = measure(cfg, base, key, 2, args)
    finally:
        upstream.stop()
        Proc.stop_all()
    text = render(one, two, args)
    print(text)
    if not args.quick:
        write_section("scale-gateway", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
