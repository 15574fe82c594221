"""Drive a real `domicile serve` process: a site on disk, the server's log, its temp folder."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

DOMICILE = str(Path(sys.executable).parent / "domicile")


def free_port_pair() -> int:
    """A port N with N and N+1 both free on 127.0.0.1 (eu and us)."""
    for _ in range(200):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            base = probe.getsockname()[1]
        if base >= 65000:
            continue
        with socket.socket() as a, socket.socket() as b:
            try:
                a.bind(("127.0.0.1", base))
                b.bind(("127.0.0.1", base + 1))
            except OSError:
                continue
        return base
    raise RuntimeError("no two consecutive free ports")


@dataclass
class Site:
    """A site made with `domicile init`, driven through the CLI (`--config … --json`)."""

    root: Path
    port_base: int
    env: dict[str, str] = field(default_factory=dict)

    @property
    def config(self) -> Path:
        return self.root / "domicile.toml"

    def url(self, region: str) -> str:
        return f"http://127.0.0.1:{self.port_base + (0 if region == 'eu' else 1)}"

    def cli(self, *args: str, stdin: str | None = None, check: bool = True) -> Any:
        done = subprocess.run([DOMICILE, *args, "--config", str(self.config), "--json"],
                              input=stdin, capture_output=True, text=True, timeout=120,
                              env={**os.environ, **self.env})
        if check and done.returncode != 0:
            raise AssertionError(f"domicile {' '.join(args)} failed: {done.stderr}")
        return json.loads(done.stdout) if done.stdout.strip() else None

    def add_provider(self, region: str, **fields: Any) -> None:
        """Append a provider to a region (before the next region's table)."""
        body = self.config.read_text()
        block = f"\n[[regions.{region}.providers]]\n" + "".join(
            f"{key} = {json.dumps(value)}\n" for key, value in fields.items())
        marker = "\n[regions.us]" if region == "eu" else None
        if marker and marker in body:
            body = body.replace(marker, block + marker, 1)
        else:
            body += block
        self.config.write_text(body)

    def set_region_option(self, region: str, key: str, value: Any) -> None:
        body = self.config.read_text()
        header = f"[regions.{region}]\n"
        body = body.replace(header, f"{header}{key} = {json.dumps(value)}\n", 1)
        self.config.write_text(body)

    def project_key(self, region: str, *, retention: str = "zero", org: str | None = None,
                    **options: str) -> tuple[str, str]:
        org = org or self.cli("org", "create", "--name", "Acme")["id"]
        args = ["project", "create", "--org", org, "--name", "app", "--region", region,
                "--retention", retention]
        if region == "global":
            args.append("--per-request-residency")
        for name, value in options.items():
            args += [f"--{name.replace('_', '-')}", value]
        project = self.cli(*args)["id"]
        return project, self.cli("key", "create", "--project", project)["key"]


def init_site(root: Path) -> Site:
    port_base = free_port_pair()
    done = subprocess.run([DOMICILE, "init", "--dir", str(root), "--port-base", str(port_base)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return Site(root, port_base)


class Server:
    """`domicile serve` in a child process with its own TMPDIR and a captured log."""

    def __init__(self, site: Site, workdir: Path, *args: str,
                 env: dict[str, str] | None = None) -> None:
        self.site = site
        self.tmpdir = workdir / "server-tmp"
        self.tmpdir.mkdir(parents=True, exist_ok=True)
        self.log_path = workdir / "server.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [DOMICILE, "serve", "--config", str(site.config), "--log-level", "info", *args],
            stdout=self._log, stderr=subprocess.STDOUT,
            env={**os.environ, **site.env, **(env or {}), "TMPDIR": str(self.tmpdir),
                 "HF_HUB_OFFLINE": "1"},
        )

    def wait_ready(self, regions: tuple[str, ...] = ("eu", "us"), *, scheme: str = "http",
                   verify: Any = True, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        pending = list(regions)
        while pending:
            if self.process.poll() is not None:
                raise AssertionError(f"domicile serve exited: {self.log()}")
            region = pending[0]
            url = self.site.url(region).replace("http://", f"{scheme}://") + "/healthz"
            try:
                if httpx.get(url, timeout=1, verify=verify).status_code == 200:
                    pending.pop(0)
                    continue
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"{region} did not come up: {self.log()}")
            time.sleep(0.1)

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)  # a busy CI machine: never SIGKILL a flush
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
