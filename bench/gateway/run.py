"""Gateway benchmark driver: direct vs Domicile vs LiteLLM on one loopback upstream.

Called by ``bench/gateway/run.sh`` (which installs wrk and LiteLLM when missing).
Writes ``bench/RESULTS.md`` and raw data under ``bench/out/`` (gitignored).

Layout (2 cores): the fake upstream, the load generators (wrk, client.py) on core 0;
the gateway under test on core 1, one gateway at a time. Only 127.0.0.1 is contacted;
every wait and every loop is bounded by a count or a deadline; every process started
here is stopped at the end (by its own id), also on Ctrl-C / SIGTERM.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
BENCH = HERE.parent
ROOT = BENCH.parent
OUT = BENCH / "out"
sys.path.insert(0, str(ROOT))  # bench.sections
from bench.sections import RESULTS_MD, marked_sections  # noqa: E402


def other_sections() -> tuple[str, ...]:
    """The sections of RESULTS.md other benchmarks write (every one marked there now): kept
    as they are, whichever benchmarks exist."""
    text = RESULTS_MD.read_text() if RESULTS_MD.exists() else ""
    return tuple(dict.fromkeys(re.findall(r"<!-- ([\w-]+):start -->", text)))


MAIN_PY = ROOT / ".venv" / "bin" / "python"
DOMICILE = ROOT / ".venv" / "bin" / "domicile"
LITELLM_VENV = BENCH / ".venv-litellm"
LITELLM = LITELLM_VENV / "bin" / "litellm"
LITELLM_KEY = "sk-bench"
UPSTREAM_KEY_ENV = "BENCH_UPSTREAM_KEY"

CORE_LOAD = "0"  # upstream + load generators
CORE_GATEWAY = "1"  # the gateway under test

TARGET_ADDED_P50_MS = 0.5
TARGET_THROUGHPUT_RATIO = 40.0
TARGET_TTFC_OVERHEAD_MS = 0.5
# Domicile's Responses streaming: time to its first event over the provider's first chunk.
TARGET_RESPONSES_TTFE_OVERHEAD_MS = 0.5


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --------------------------------------------------------------------------- processes


class Proc:
    """A server started by the harness, in its own session so it can be stopped whole."""

    live: list[Proc] = []

    def __init__(
        self, name: str, argv: list[str], env: dict[str, str] | None = None, cwd: Path | None = None
    ) -> None:
        self.name = name
        self.log_path = OUT / f"{name}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.popen = subprocess.Popen(
            argv,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=cwd,
            start_new_session=True,
        )
        self.pid = self.popen.pid
        Proc.live.append(self)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, n: int = 15) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n:])

    def stop(self, sig: int = signal.SIGTERM, grace: float = 15.0) -> None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                if sig == signal.SIGINT:
                    os.kill(self.pid, sig)  # let the process itself shut down (pyinstrument)
                else:
                    os.killpg(self.pid, sig)  # our own session: this process and its children
            try:
                self.popen.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.pid, signal.SIGKILL)
                self.popen.wait(timeout=10)
        # children left in the session (e.g. worker processes)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        if self in Proc.live:
            Proc.live.remove(self)
        self._log.close()

    @classmethod
    def stop_all(cls) -> None:
        for p in list(cls.live):
            try:
                p.stop(grace=5.0)
            except Exception as exc:  # keep stopping the others
                log(f"could not stop {p.name}: {exc}")


def _on_signal(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def group_cpu_seconds(pgid: int) -> float:
    """utime+stime of every process in a process group (Linux /proc)."""
    tck = os.sysconf("SC_CLK_TCK")
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            raw = stat.read_text()
        except OSError:
            continue
        fields = raw[raw.rfind(")") + 2 :].split()
        # fields[0] = state, [2] = pgrp, [11] = utime, [12] = stime
        if len(fields) > 12 and int(fields[2]) == pgid:
            total += int(fields[11]) + int(fields[12])
    return total / tck


# --------------------------------------------------------------------------- helpers


def free_port(pair: bool = False) -> int:
    """A free loopback port (and the one after it, with pair=True). Bounded tries."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if not pair:
            return port
        if port < 65000:
            with socket.socket() as s2:
                try:
                    s2.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
            return port
    raise RuntimeError("no free port pair found")


def http(
    method: str,
    url: str,
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
    timeout: float = 5.0,
) -> tuple[int, bytes, dict[str, str]]:
    assert url.startswith("http://127.0.0.1:"), url  # loopback only
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(req, timeout=timeout) as resp:
            return resp.status, resp.read(), dict(resp.headers.items())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), dict(exc.headers.items())


def wait_ready(proc: Proc, url: str, headers: dict[str, str] | None, deadline_s: float) -> str:
    """Poll url until 200. Returns "" when ready, else the reason."""
    end = time.monotonic() + deadline_s
    last = "no answer"
    while time.monotonic() < end:
        if not proc.alive():
            return f"{proc.name} exited with code {proc.popen.returncode}"
        try:
            status, body, _ = http("GET", url, headers, timeout=2.0)
            if status == 200:
                return ""
            last = f"HTTP {status}: {body[:200]!r}"
        except (OSError, urllib.error.URLError) as exc:
            last = str(exc)
        time.sleep(0.25)
    return f"not ready after {deadline_s:.0f} s ({last})"


def sanity(base: str, key: str, provider: str = "") -> str:
    """One plain and one streaming request through the contender; "" when both work (and,
    with provider, when Domicile's x-domicile-provider header names it)."""
    hdrs = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    plain = b'{"model":"bench-model","messages":[{"role":"user","content":"hello"}]}'
    stream = plain[:-1] + b',"stream":true}'
    try:
        st, body, h = http("POST", base + "/chat/completions", hdrs, plain, timeout=30)
        if st != 200 or b"choices" not in body:
            return f"chat completion answered HTTP {st}: {body[:300]!r}"
        got = {k.lower(): v for k, v in h.items()}.get("x-domicile-provider", "")
        if provider and got != provider:
            return f"x-domicile-provider is {got!r}, not {provider!r}"
        st, body, _ = http("POST", base + "/chat/completions", hdrs, stream, timeout=30)
        if st != 200 or b"[DONE]" not in body:
            return f"streaming chat completion answered HTTP {st}: {body[:300]!r}"
    except (OSError, urllib.error.URLError) as exc:
        return f"request failed: {exc}"
    return ""


def run_cmd(
    argv: list[str],
    env: dict[str, str] | None = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        check=False,
    )


def base_env() -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k.lower() not in ("http_proxy", "https_proxy", "all_proxy")
    }
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    return env


# --------------------------------------------------------------------------- contenders


@dataclass
class Contender:
    name: str
    base: str = ""  # http://127.0.0.1:P/v1
    key: str = ""
    proc: Proc | None = None
    skipped: str = ""
    results: dict[str, Any] = field(default_factory=dict)


def start_upstream() -> tuple[Proc, int]:
    port = free_port()
    proc = Proc(
        "upstream",
        ["taskset", "-c", CORE_LOAD, str(MAIN_PY), str(HERE / "upstream.py"), "--port", str(port)],
        env=base_env(),
    )
    why = wait_ready(proc, f"http://127.0.0.1:{port}/v1/models", None, 20)
    if why:
        raise RuntimeError(f"upstream did not come up: {why}\n{proc.tail()}")
    return proc, port


def insert_provider(cfg_path: Path, uport: int) -> None:
    """Add the bench upstream to region eu: text inserted before the first us-region
    table so that the array-of-tables entry lands under regions.eu; checked with tomllib."""
    text = cfg_path.read_text()
    block = (
        "\n[[regions.eu.providers]]\n"
        'name = "bench-upstream"\n'
        'kind = "openai-compatible"\n'
        f'base_url = "http://127.0.0.1:{uport}/v1"\n'
        f'api_key_env = "{UPSTREAM_KEY_ENV}"\n'
        'models = ["bench-model"]\n\n'
    )
    lines = text.splitlines(keepends=True)
    at = len(lines)
    pat = re.compile(r"^\s*\[\[?\s*regions\s*\.\s*\"?us\"?\s*[\].]")
    for i, line in enumerate(lines):
        if pat.match(line):
            at = i
            # keep comment lines that introduce the us table with it
            while at > 0 and lines[at - 1].lstrip().startswith("#"):
                at -= 1
            break
    new = "".join(lines[:at]) + block + "".join(lines[at:])
    parsed = tomllib.loads(new)
    names = [p.get("name") for p in parsed["regions"]["eu"].get("providers", [])]
    if "bench-upstream" not in names:
        raise RuntimeError("could not add the bench provider to regions.eu")
    cfg_path.write_text(new)


def domicile_site(tmp: Path, uport: int) -> tuple[Path, str, str]:
    """A throwaway site through the public CLI. Returns (config path, eu base URL, key)."""
    if not DOMICILE.exists():
        raise RuntimeError(f"{DOMICILE} does not exist")
    helptext = run_cmd([str(DOMICILE), "--help"], timeout=60)
    if helptext.returncode != 0 or not all(w in helptext.stdout for w in ("serve", "key")):
        raise RuntimeError(
            "`domicile --help` does not list serve and key yet: "
            + (helptext.stderr or helptext.stdout).strip()[-300:]
        )
    site = tmp / "site"
    env = base_env()
    env[UPSTREAM_KEY_ENV] = "bench-upstream-key"
    env.pop("DOMICILE_CONFIG", None)
    pbase = free_port(pair=True)

    def cli(*args: str) -> dict[str, Any]:
        argv = [str(DOMICILE), *args]
        r = run_cmd(argv, env=env, timeout=180)
        if r.returncode != 0:
            lines = [ln for ln in (r.stderr or r.stdout).strip().splitlines() if ln.strip()]
            raise RuntimeError(
                f"`domicile {' '.join(args)}` exited {r.returncode}: "
                + (lines[-1].strip() if lines else "(no output)")
                + "\n"
                + "\n".join(lines[-12:])
            )
        try:
            return json.loads(r.stdout) if r.stdout.strip() else {}
        except json.JSONDecodeError:
            return {}

    cli("init", "--dir", str(site), "--port-base", str(pbase))
    cfg = site / "domicile.toml"
    insert_provider(cfg, uport)
    c = str(cfg)
    org = cli("org", "create", "--name", "Bench", "--json", "--config", c)["id"]
    proj = cli(
        "project",
        "create",
        "--org",
        org,
        "--name",
        "bench",
        "--region",
        "eu",
        "--json",
        "--config",
        c,
    )["id"]
    key = cli("key", "create", "--project", proj, "--json", "--config", c)["key"]
    listen = tomllib.loads(cfg.read_text())["regions"]["eu"]["listen"]
    port = int(str(listen).rsplit(":", 1)[1])
    return cfg, f"http://127.0.0.1:{port}/v1", key


def domicile_env() -> dict[str, str]:
    env = base_env()
    env[UPSTREAM_KEY_ENV] = "bench-upstream-key"
    env.pop("DOMICILE_CONFIG", None)
    return env


def start_domicile(
    c: Contender, cfg: Path, name: str = "domicile", prefix: list[str] | None = None
) -> None:
    argv = [
        "taskset",
        "-c",
        CORE_GATEWAY,
        *(prefix or []),
        str(DOMICILE),
        "serve",
        "--region",
        "eu",
        "--config",
        str(cfg),
    ]
    c.proc = Proc(name, argv, env=domicile_env(), cwd=cfg.parent)
    why = wait_ready(c.proc, c.base.removesuffix("/v1") + "/healthz", None, 60)
    if why:
        raise RuntimeError(f"`domicile serve` did not come up: {why}\n{c.proc.tail()}")


def start_litellm(c: Contender, tmp: Path, uport: int) -> None:
    if not LITELLM.exists():
        raise RuntimeError(f"{LITELLM} missing (run.sh installs it)")
    port = free_port()
    cfg = tmp / "litellm.yaml"
    cfg.write_text(
        "model_list:\n"
        "  - model_name: bench-model\n"
        "    litellm_params:\n"
        "      model: openai/bench-model\n"
        f"      api_base: http://127.0.0.1:{uport}/v1\n"
        "      api_key: anything\n"
        "litellm_settings:\n"
        "  callbacks: []\n"
        "  turn_off_message_logging: true\n"
        "general_settings:\n"
        f"  master_key: {LITELLM_KEY}\n"
        "  disable_spend_logs: true\n"
    )
    env = base_env()
    env.update(LITELLM_LOG="ERROR", LITELLM_LOCAL_MODEL_COST_MAP="True")
    env.pop("DATABASE_URL", None)
    c.proc = Proc(
        "litellm",
        [
            "taskset",
            "-c",
            CORE_GATEWAY,
            str(LITELLM),
            "--config",
            str(cfg),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--num_workers",
            "1",
        ],
        env=env,
        cwd=tmp,
    )
    c.base, c.key = f"http://127.0.0.1:{port}/v1", LITELLM_KEY
    why = wait_ready(c.proc, c.base + "/models", {"Authorization": f"Bearer {LITELLM_KEY}"}, 120)
    if why:
        raise RuntimeError(f"litellm did not come up: {why}\n{c.proc.tail()}")


# --------------------------------------------------------------------------- measurement


def client(
    c: Contender,
    mode: str,
    args: argparse.Namespace,
    concurrency: int = 1,
    requests: int | None = None,
) -> dict[str, Any]:
    n = requests if requests is not None else args.requests
    deadline = max(120.0, n * 0.05)
    argv = [
        "taskset",
        "-c",
        CORE_LOAD,
        str(MAIN_PY),
        str(HERE / "client.py"),
        "--url",
        c.base + ("/responses" if mode == "responses-stream" else "/chat/completions"),
        "--key",
        c.key,
        "--mode",
        mode,
        "--requests",
        str(n),
        "--warmup",
        str(args.warmup),
        "--concurrency",
        str(concurrency),
        "--deadline",
        str(deadline),
    ]
    r = run_cmd(argv, env=base_env(), timeout=deadline + 30)
    try:
        out: dict[str, Any] = json.loads(r.stdout.strip().splitlines()[-1])
    except (json.JSONDecodeError, IndexError):
        out = {"fatal": f"client exited {r.returncode}: {r.stderr.strip()[-400:]}"}
    return out


def wrk(c: Contender, args: argparse.Namespace) -> dict[str, Any]:
    url = c.base + "/chat/completions"
    env = base_env()
    env["BENCH_KEY"] = c.key
    common = [
        "taskset",
        "-c",
        CORE_LOAD,
        "wrk",
        "-t1",
        f"-c{args.connections}",
        "--timeout",
        "10s",
        "-s",
        str(HERE / "post.lua"),
    ]
    # warm-up, discarded
    run_cmd([*common, f"-d{args.wrk_warmup}s", url], env=env, timeout=args.wrk_warmup + 60)
    cpu0 = group_cpu_seconds(c.proc.pid) if c.proc else 0.0
    t0 = time.monotonic()
    r = run_cmd(
        [*common, f"-d{args.wrk_duration}s", "--latency", url],
        env=env,
        timeout=args.wrk_duration + 60,
    )
    wall = time.monotonic() - t0
    cpu1 = group_cpu_seconds(c.proc.pid) if c.proc else 0.0
    (OUT / f"wrk-{c.name}.txt").write_text(r.stdout + r.stderr)
    m = re.search(r"^BENCHJSON (\{.*\})$", r.stdout, re.M)
    if not m:
        return {"fatal": f"wrk exited {r.returncode}: {(r.stderr or r.stdout)[-400:]}"}
    d: dict[str, Any] = json.loads(m.group(1))
    errs = (
        d["connect_errors"]
        + d["read_errors"]
        + d["write_errors"]
        + d["status_errors"]
        + d["timeouts"]
    )
    ok = max(0, d["requests"] - d["status_errors"])
    d["errors"] = errs
    d["rps"] = ok / (d["duration_us"] / 1e6)  # successful responses per second
    if c.proc:
        d["gateway_cpu_pct"] = 100.0 * (cpu1 - cpu0) / wall
    return d


def measure(c: Contender, args: argparse.Namespace) -> None:
    log(f"{c.name}: concurrency-1 latency ({args.requests} requests after {args.warmup})")
    c.results["plain"] = client(c, "plain", args)
    log(f"{c.name}: concurrency-1 streaming TTFC ({args.requests} requests)")
    c.results["stream"] = client(c, "stream", args)
    if c.name == "domicile":  # the Responses API on top of the same chat stream
        log(f"{c.name}: concurrency-1 Responses streaming, time to first event "
            f"({args.requests} requests)")
        c.results["responses_stream"] = client(c, "responses-stream", args)
    log(f"{c.name}: wrk -c{args.connections}, {args.wrk_warmup} s warm-up + {args.wrk_duration} s")
    c.results["wrk"] = wrk(c, args)
    p, s, w = c.results["plain"], c.results["stream"], c.results["wrk"]
    log(
        f"{c.name}: p50 {p.get('latency', {}).get('p50_ms', float('nan')):.3f} ms, "
        f"TTFC p50 {s.get('ttfc', {}).get('p50_ms', float('nan')):.3f} ms, "
        f"{w.get('rps', float('nan')):.0f} req/s, errors "
        f"{p.get('errors')}/{s.get('errors')}/{w.get('errors')}"
    )


# --------------------------------------------------------------------------- profile


def profile_domicile(c: Contender, cfg: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Run `domicile serve` under pyinstrument for a fixed number of requests."""
    session = OUT / "profile-domicile.pyisession"
    text = OUT / "profile-domicile.txt"
    for f in (session, text):
        f.unlink(missing_ok=True)
    prefix = [
        str(MAIN_PY),
        "-m",
        "pyinstrument",
        "--interval",
        "0.0002",
        "-r",
        "session",
        "-o",
        str(session),
    ]
    start_domicile(c, cfg, name="domicile-profile", prefix=prefix)
    try:
        n = args.profile_requests
        log(f"profile: {n} plain requests at concurrency 8, {n // 5} streaming")
        plain = client(c, "plain", args, concurrency=8, requests=n)
        stream = client(c, "stream", args, concurrency=8, requests=n // 5)
    finally:
        assert c.proc is not None
        c.proc.stop(sig=signal.SIGINT, grace=60)
        c.proc = None
    if not session.exists():
        return {"error": "pyinstrument wrote no session (did `domicile serve` exit on SIGINT?)"}
    r = run_cmd(
        [
            str(MAIN_PY),
            "-m",
            "pyinstrument",
            "--load",
            str(session),
            "-r",
            "text",
            "--show-all",
            "-o",
            str(text),
        ],
        timeout=300,
    )
    if r.returncode != 0:
        return {"error": f"pyinstrument render failed: {r.stderr[-300:]}"}
    r = run_cmd([str(MAIN_PY), str(HERE / "profile_summary.py"), str(session)], timeout=300)
    try:
        summary: dict[str, Any] = json.loads(r.stdout)
    except json.JSONDecodeError:
        return {"error": f"profile summary failed: {r.stderr[-300:]}"}
    summary["load"] = {
        "plain": {k: plain.get(k) for k in ("rps", "errors")},
        "stream": {k: stream.get(k) for k in ("rps", "errors")},
    }
    summary["text_report"] = str(text.relative_to(ROOT))
    return summary


# --------------------------------------------------------------------------- report


def versions() -> dict[str, str]:
    v: dict[str, str] = {}
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    v["cpu"] = cpu
    v["cores"] = str(os.cpu_count())
    v["kernel"] = platform.release()

    def pkg(py: Path, names: list[str]) -> dict[str, str]:
        code = (
            "import importlib.metadata as m, json, sys, platform\n"
            "d = {'python': platform.python_version()}\n"
            f"for n in {names!r}:\n"
            "    try: d[n] = m.version(n)\n"
            "    except Exception: d[n] = 'not installed'\n"
            "print(json.dumps(d))"
        )
        if not py.exists():
            return {}
        r = run_cmd([str(py), "-c", code], timeout=60)
        try:
            return dict(json.loads(r.stdout))
        except json.JSONDecodeError:
            return {}

    main = pkg(MAIN_PY, ["domicile", "aiohttp", "uvloop", "uvicorn", "starlette", "pyinstrument"])
    v.update({f"{k}": val for k, val in main.items()})
    lite = pkg(LITELLM_VENV / "bin" / "python", ["litellm", "uvicorn", "fastapi"])
    if lite:
        v["litellm"] = lite.get("litellm", "?")
        v["litellm venv: python / uvicorn / fastapi"] = (
            f"{lite.get('python')} / {lite.get('uvicorn')} / {lite.get('fastapi')}"
        )
    w = run_cmd(["wrk", "--version"], timeout=10)
    v["wrk"] = (
        (w.stdout or w.stderr).splitlines()[0].split(" [")[0] if (w.stdout or w.stderr) else "?"
    )
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        v["domicile commit"] = run_cmd(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], timeout=10
        ).stdout.strip() + (
            " (+ uncommitted changes)"
            if run_cmd(
                ["git", "-C", str(ROOT), "status", "--porcelain", "--", "src"], timeout=10
            ).stdout.strip()
            else ""
        )
    return v


def _g(d: dict[str, Any], *path: str) -> float | None:
    cur: Any = d
    for p in path:
        if not isinstance(cur, dict) or p not in cur:
            return None
        cur = cur[p]
    return float(cur) if isinstance(cur, int | float) else None


def fmt(x: float | None, nd: int = 3, suffix: str = "") -> str:
    return "n/a" if x is None else f"{x:.{nd}f}{suffix}"


def render(data: dict[str, Any]) -> str:
    cs: dict[str, dict[str, Any]] = data["contenders"]
    direct = cs.get("direct", {}).get("results", {})
    direct_end = cs.get("direct_end", {}).get("results", {})

    def baseline(*path: str) -> float | None:
        # The lower of the two direct runs (start and end): the larger, more conservative
        # added latency for the gateways.
        vals = [v for v in (_g(direct, *path), _g(direct_end, *path)) if v is not None]
        return min(vals) if vals else None

    d_p50 = baseline("plain", "latency", "p50_ms")
    d_p99 = baseline("plain", "latency", "p99_ms")
    d_ttfc = baseline("stream", "ttfc", "p50_ms")
    a = data["args"]

    def added(name: str, key: str) -> float | None:
        r = cs.get(name, {}).get("results", {})
        if name.startswith("direct") or not r:
            return None
        base = {"p50": d_p50, "p99": d_p99, "ttfc": d_ttfc}[key]
        val = (
            _g(r, "stream", "ttfc", "p50_ms")
            if key == "ttfc"
            else _g(r, "plain", "latency", f"{key}_ms")
        )
        return None if val is None or base is None else val - base

    lines = [
        "# Gateway benchmark: direct vs Domicile vs LiteLLM",
        "",
        f"Written by `bench/gateway/run.py` on {data['date']} (run took "
        f"{data['elapsed_s']:.0f} s). Re-run with `bench/gateway/run.sh`.",
        "",
        "Same loopback fake OpenAI upstream (`bench/gateway/upstream.py`, aiohttp + uvloop) "
        "for every contender, one gateway running at a time. Core 0: upstream + load "
        "generators; core 1: the gateway under test, one worker.",
        "",
        f"- **Latency (c=1)**: `client.py`, {a['requests']} sequential keep-alive "
        f"non-streaming requests after {a['warmup']} warm-up; send to last byte. "
        "*Added* = gateway percentile minus direct percentile; direct is measured at the "
        "start and again at the end of the run, and the lower of the two is the baseline.",
        f'- **TTFC (c=1)**: same client, {a["requests"]} sequential `"stream": true` '
        "requests; send to the first received bytes holding an SSE `data:` line.",
        f"- **Throughput (c={a['connections']})**: `wrk -t1 -c{a['connections']} --latency` "
        f"for {a['wrk_duration']} s after a {a['wrk_warmup']} s warm-up; successful responses "
        "per second. *GW CPU* = the gateway's CPU use during that run (100 % = core 1 full).",
        "",
        "## Absolute numbers",
        "",
        "| contender | p50 ms | p99 ms | added p50 ms | added p99 ms | TTFC p50 ms | "
        "TTFC overhead ms | req/s (c64) | wrk p50 / p99 ms | GW CPU | errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name in ("direct", "domicile", "litellm", "direct_end"):
        c = cs.get(name)
        if c is None:
            continue
        if c.get("skipped"):
            lines.append(f"| {name} | not available: see below | | | | | | | | | |")
            continue
        r = c["results"]
        errs = [r.get(k, {}).get("errors") for k in ("plain", "stream", "wrk") if k in r]
        wl50, wl99 = _g(r, "wrk", "lat_p50_us"), _g(r, "wrk", "lat_p99_us")
        label = "direct (again, at the end)" if name == "direct_end" else name
        cpu = _g(r, "wrk", "gateway_cpu_pct")
        lines.append(
            f"| {label} | {fmt(_g(r, 'plain', 'latency', 'p50_ms'))} "
            f"| {fmt(_g(r, 'plain', 'latency', 'p99_ms'))} "
            f"| {fmt(added(name, 'p50'))} | {fmt(added(name, 'p99'))} "
            f"| {fmt(_g(r, 'stream', 'ttfc', 'p50_ms'))} | {fmt(added(name, 'ttfc'))} "
            f"| {fmt(_g(r, 'wrk', 'rps'), 0) if 'wrk' in r else '-'} "
            + (
                f"| {fmt(None if wl50 is None else wl50 / 1000, 2)} / "
                f"{fmt(None if wl99 is None else wl99 / 1000, 2)} "
                if "wrk" in r
                else "| - "
            )
            + f"| {fmt(cpu, 0, ' %') if not name.startswith('direct') else '-'} "
            f"| {'/'.join('?' if e is None else str(e) for e in errs)} |"
        )
    lines += ["", "Errors are plain / stream / wrk (non-2xx, socket errors, timeouts).", ""]

    dom = cs.get("domicile", {})
    lite = cs.get("litellm", {})
    dom_ok = bool(dom) and not dom.get("skipped")
    lite_ok = bool(lite) and not lite.get("skipped")
    d_rps = _g(dom.get("results", {}), "wrk", "rps") if dom_ok else None
    l_rps = _g(lite.get("results", {}), "wrk", "rps") if lite_ok else None
    ratio = d_rps / l_rps if d_rps and l_rps else None
    dom_add50 = added("domicile", "p50") if dom_ok else None
    dom_add99 = added("domicile", "p99") if dom_ok else None
    lite_add50 = added("litellm", "p50") if lite_ok else None
    lite_add99 = added("litellm", "p99") if lite_ok else None
    dom_ttfc = added("domicile", "ttfc") if dom_ok else None
    lite_ttfc = added("litellm", "ttfc") if lite_ok else None

    def x(a_: float | None, b_: float | None) -> str:
        return "n/a" if a_ is None or b_ is None or b_ <= 0 else f"{a_ / b_:.1f}x"

    lines += [
        "## Ratios",
        "",
        "| measure | Domicile | LiteLLM | LiteLLM / Domicile |",
        "|---|---:|---:|---:|",
        f"| added latency p50 (ms) | {fmt(dom_add50)} | {fmt(lite_add50)} "
        f"| {x(lite_add50, dom_add50)} |",
        f"| added latency p99 (ms) | {fmt(dom_add99)} | {fmt(lite_add99)} "
        f"| {x(lite_add99, dom_add99)} |",
        f"| TTFC overhead p50 (ms) | {fmt(dom_ttfc)} | {fmt(lite_ttfc)} "
        f"| {x(lite_ttfc, dom_ttfc)} |",
        f"| throughput c{a['connections']} (req/s) | {fmt(d_rps, 0)} | {fmt(l_rps, 0)} "
        f"| Domicile / LiteLLM = **{'n/a' if ratio is None else f'{ratio:.1f}x'}** |",
        "",
    ]
    direct_rps = _g(direct, "wrk", "rps")
    if d_rps and direct_rps:
        lines += [
            f"Direct (no gateway) does {direct_rps:.0f} req/s on the same setup, so the "
            f"upstream is not what limits the gateways (Domicile reaches "
            f"{100 * d_rps / direct_rps:.0f} % of it).",
            "",
        ]

    def verdict(ok: bool | None) -> str:
        return "n/a (Domicile not measured)" if ok is None else ("**PASS**" if ok else "**FAIL**")

    dom_r = dom.get("results", {}) if dom_ok else {}
    resp_ttfe = _g(dom_r, "responses_stream", "ttfc", "p50_ms")
    resp_added = None if resp_ttfe is None or d_ttfc is None else resp_ttfe - d_ttfc
    dom_chat_ttfc = _g(dom_r, "stream", "ttfc", "p50_ms")
    resp_ok = None if resp_added is None else resp_added < TARGET_RESPONSES_TTFE_OVERHEAD_MS
    if resp_ttfe is not None:
        lines += [
            "## Responses API streaming (Domicile)",
            "",
            f'Same client, {a["requests"]} sequential `"stream": true` requests to '
            "`/v1/responses`, translated from the provider's chat stream event by event. "
            "*Time to first event* = send to the first received bytes holding an SSE "
            "`data:` line (`response.created`, sent with the provider's first chunk); "
            "*added* = minus direct's TTFC (the provider's first chunk, same run).",
            "",
            "| measure | p50 ms | p99 ms |",
            "|---|---:|---:|",
            f"| time to first event | {fmt(resp_ttfe)} "
            f"| {fmt(_g(dom_r, 'responses_stream', 'ttfc', 'p99_ms'))} |",
            f"| added over the provider's first chunk | {fmt(resp_added)} | |",
            "| added over Domicile's own chat TTFC (the translation) | "
            f"{fmt(None if dom_chat_ttfc is None else resp_ttfe - dom_chat_ttfc)} | |",
            f"| whole stream, to `response.completed` "
            f"| {fmt(_g(dom_r, 'responses_stream', 'latency', 'p50_ms'))} "
            f"| {fmt(_g(dom_r, 'responses_stream', 'latency', 'p99_ms'))} |",
            "",
            f"Errors: {dom_r.get('responses_stream', {}).get('errors')}.",
            "",
        ]

    lines += [
        "## Targets",
        "",
        "| target | measured | result |",
        "|---|---:|---|",
        f"| Domicile added latency p50 < {TARGET_ADDED_P50_MS} ms | {fmt(dom_add50)} ms "
        f"| {verdict(None if dom_add50 is None else dom_add50 < TARGET_ADDED_P50_MS)} |",
        f"| Domicile throughput >= {TARGET_THROUGHPUT_RATIO:.0f}x LiteLLM's | "
        f"{'n/a' if ratio is None else f'{ratio:.1f}x'} "
        f"| {verdict(None if ratio is None else ratio >= TARGET_THROUGHPUT_RATIO)} |",
        f"| Domicile TTFC overhead p50 < {TARGET_TTFC_OVERHEAD_MS} ms | {fmt(dom_ttfc)} ms "
        f"| {verdict(None if dom_ttfc is None else dom_ttfc < TARGET_TTFC_OVERHEAD_MS)} |",
        f"| Domicile Responses streaming: first event over the provider's first chunk p50 "
        f"< {TARGET_RESPONSES_TTFE_OVERHEAD_MS} ms | {fmt(resp_added)} ms "
        f"| {verdict(resp_ok)} |",
        "",
    ]

    skipped = [(n, c["skipped"]) for n, c in cs.items() if c.get("skipped")]
    if skipped:
        lines += ["## Not available in this run", ""]
        for n, why in skipped:
            lines += [f"- **{n}**: not available: " + why.splitlines()[0][:400]]
            rest = "\n".join(why.splitlines()[1:]).strip()
            if rest:
                lines += ["", "  ```", *["  " + ln for ln in rest.splitlines()[-12:]], "  ```"]
        lines += [""]

    prof = data.get("profile")
    lines += ["## Where Domicile's time goes (pyinstrument)", ""]
    if not prof:
        lines += [
            "Not profiled in this run (Domicile not available, or `--no-profile`). "
            "`bench/gateway/profile.sh` runs it alone.",
            "",
        ]
    elif prof.get("error"):
        lines += [f"Profiling failed: {prof['error']}", ""]
    else:
        lines += [
            f"`domicile serve` under pyinstrument (sampling every 0.2 ms), driven by "
            f"{data['args']['profile_requests']} plain + {data['args']['profile_requests'] // 5}"
            f" streaming requests at concurrency 8 (`bench/gateway/profile.sh`). Full "
            f"call tree: `{prof['text_report']}` (gitignored). Profiled throughput is lower "
            "than the un-profiled one; shares are what matter. "
            f"Sampled {prof['total_s']:.1f} s wall, {prof.get('cpu_s', 0):.1f} s CPU; "
            f"start-up ({prof.get('startup_s', 0):.1f} s: imports, CLI, migrations, app "
            f"building) and idle ({prof.get('idle_s', 0):.1f} s in epoll) are left out. "
            f"Shares below are of the {prof.get('busy_s', 0):.1f} s spent on the request path "
            "(CPU time under the event loop).",
            "",
            "By component (self time on the request path):",
            "",
            "| component | share |",
            "|---|---:|",
            *[f"| {g['group']} | {g['share']:.1%} |" for g in prof["groups"][:14]],
            "",
            "Top frames by self time:",
            "",
            "| function | where | share |",
            "|---|---|---:|",
            *[
                f"| `{f['function']}` | {f['where']} | {f['share']:.1%} |"
                for f in prof["top_self"][:20]
            ],
            "",
            "Domicile's own functions by inclusive time (time in the function and what it "
            "calls; time awaiting the upstream is not counted):",
            "",
            "| function | where | share |",
            "|---|---|---:|",
            *[
                f"| `{f['function']}` | {f['where']} | {f['share']:.1%} |"
                for f in prof["domicile_inclusive"][:15]
            ],
            "",
            "pyinstrument samples the event-loop thread only: work handed to threads (the "
            "batched usage-metadata writes, key look-ups on a cache miss) is not in these "
            "shares, but it is in the GW CPU column above.",
            "",
        ]

    lines += ["## Environment", "", "| | |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in data["versions"].items()]
    lines += [
        "",
        "LiteLLM ran with its fastest honest settings: no database, `callbacks: []`, "
        "`turn_off_message_logging: true`, `disable_spend_logs: true`, `LITELLM_LOG=ERROR`, "
        "`LITELLM_LOCAL_MODEL_COST_MAP=True`, `--num_workers 1`. Domicile ran as "
        "`domicile serve --region eu` on a fresh site made with its CLI (zero-retention "
        "project, the upstream as an `openai-compatible` provider of region eu).",
        "",
        "Raw data: `bench/out/results.json`, wrk output `bench/out/wrk-*.txt`, server logs "
        "`bench/out/*.log`.",
        "",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--contenders", default="direct,domicile,litellm")
    ap.add_argument("--requests", type=int, default=3000, help="c=1 requests per measurement")
    ap.add_argument("--warmup", type=int, default=300)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--wrk-duration", type=int, default=10)
    ap.add_argument("--wrk-warmup", type=int, default=3)
    ap.add_argument(
        "--profile",
        dest="profile",
        action="store_true",
        default=True,
        help="also profile Domicile with pyinstrument (default)",
    )
    ap.add_argument("--no-profile", dest="profile", action="store_false")
    ap.add_argument(
        "--profile-only",
        action="store_true",
        help="only profile Domicile; re-render RESULTS.md from the last results",
    )
    ap.add_argument("--profile-requests", type=int, default=20000)
    args = ap.parse_args()

    OUT.mkdir(parents=True, exist_ok=True)
    # Also SIGINT: when run.sh starts us in the background SIGINT is ignored, and that
    # would be inherited by the servers (pyinstrument's report is written on SIGINT).
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    if shutil.which("wrk") is None and not args.profile_only:
        log("wrk is not installed (run.sh installs it)")
        return 1
    if (os.cpu_count() or 1) < 2:
        log("warning: fewer than 2 cores; pinning cannot separate load and gateway")

    started = time.monotonic()
    load_start = os.getloadavg()
    wanted = [n.strip() for n in args.contenders.split(",") if n.strip()]
    results_json = OUT / "results.json"
    data: dict[str, Any]
    if args.profile_only:
        data = (
            json.loads(results_json.read_text())
            if results_json.exists()
            else {"contenders": {}, "args": vars(args), "elapsed_s": 0.0}
        )
        data["args"]["profile_requests"] = args.profile_requests
    else:
        data = {"args": vars(args), "contenders": {}}
    tmp = Path(tempfile.mkdtemp(prefix="domicile-bench-"))
    try:
        _upstream, uport = start_upstream()
        log(f"upstream on 127.0.0.1:{uport} (core {CORE_LOAD})")
        dom_cfg: Path | None = None
        dom = Contender("domicile")
        if "domicile" in wanted or args.profile_only:
            try:
                dom_cfg, dom.base, dom.key = domicile_site(tmp, uport)
            except (RuntimeError, OSError, KeyError, subprocess.SubprocessError) as exc:
                dom.skipped = str(exc)
                log(f"domicile: not available: {str(exc).splitlines()[0][:300]}")

        if not args.profile_only:
            for name in wanted:
                if name == "direct":
                    c = Contender("direct", base=f"http://127.0.0.1:{uport}/v1", key="bench")
                elif name == "domicile":
                    c = dom
                    if not c.skipped:
                        assert dom_cfg is not None
                        try:
                            start_domicile(c, dom_cfg)
                            why = sanity(c.base, c.key, provider="bench-upstream")
                            if why:
                                raise RuntimeError(why + "\n" + c.proc.tail() if c.proc else why)
                        except RuntimeError as exc:
                            c.skipped = str(exc)
                elif name == "litellm":
                    c = Contender("litellm")
                    try:
                        log("litellm: starting (about 6 s)")
                        start_litellm(c, tmp, uport)
                        why = sanity(c.base, c.key)
                        if why:
                            raise RuntimeError(why)
                    except RuntimeError as exc:
                        c.skipped = str(exc)
                else:
                    log(f"unknown contender {name!r}")
                    continue
                if c.skipped:
                    log(f"{name}: not available: {c.skipped.splitlines()[0][:300]}")
                else:
                    if name == "direct":
                        why = sanity(c.base, c.key)
                        if why:
                            raise RuntimeError("upstream sanity check failed: " + why)
                    measure(c, args)
                if c.proc is not None:
                    c.proc.stop()
                    c.proc = None
                data["contenders"][name] = {
                    "base": c.base,
                    "skipped": c.skipped,
                    "results": c.results,
                }
            if "direct" in wanted and len(wanted) > 1:
                # The baseline again, after the gateways: shows drift/noise during the run.
                c = Contender("direct_end", base=f"http://127.0.0.1:{uport}/v1", key="bench")
                log("direct again (end of run): concurrency-1 latency and TTFC")
                c.results["plain"] = client(c, "plain", args)
                c.results["stream"] = client(c, "stream", args)
                data["contenders"]["direct_end"] = {
                    "base": c.base,
                    "skipped": "",
                    "results": c.results,
                }
        if args.profile or args.profile_only:
            if dom_cfg is not None and not dom.skipped:
                log("profiling domicile under pyinstrument")
                try:
                    data["profile"] = profile_domicile(dom, dom_cfg, args)
                except RuntimeError as exc:
                    data["profile"] = {"error": str(exc).splitlines()[0][:400]}
            else:
                data.pop("profile", None)
    finally:
        Proc.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)

    data["date"] = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    if not args.profile_only:
        data["elapsed_s"] = time.monotonic() - started
    data["versions"] = versions()
    load_end = os.getloadavg()
    data["versions"]["load average (1 min) at start / end"] = (
        f"{load_start[0]:.2f} / {load_end[0]:.2f} (other work on the machine adds noise)"
    )
    results_json.write_text(json.dumps(data, indent=2))
    RESULTS_MD.write_text(render(data) + marked_sections(other_sections()))
    log(f"wrote {RESULTS_MD.relative_to(ROOT)} and {results_json.relative_to(ROOT)}")
    print(RESULTS_MD.read_text())
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        Proc.stop_all()
        log("interrupted; servers stopped")
        sys.exit(130)
