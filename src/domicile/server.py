"""`domicile serve`: one ASGI app per region, each on its own `listen` address.

The embedded default runs every region in one process (one uvicorn server per region on one
event loop). With `workers > 1` the parent binds each region's socket and forks that many
workers which all accept on them; workers keep no state another worker would need (key
lookups are short-lived caches, usage is flushed to the region's store).

Before any worker starts, the parent brings each region's store up to date. A region that
cannot be prepared (its database unreachable, say) is named in one line on stderr and not
served; the others are. Every server speaks HTTP through `http_server.RegionProtocol`, which
bounds request heads, their time, idle connections and open connections (`[server]`).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import shutil
import signal
import socket
import ssl
import sys
import tempfile
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn

from domicile.config import RegionSettings, Settings, is_loopback_host
from domicile.errors import ConfigError, InvalidInput, StoreUnavailable
from domicile.failures import describe
from domicile.http_server import protocol_for
from domicile.observability.logs import JsonFormatter
from domicile.observability.metrics import enable_multiprocess
from domicile.site import Site, check_key_file

__all__ = [
    "TLS12_CIPHERS",
    "TlsFiles",
    "build_region_app",
    "check_plain_http",
    "prepare_regions",
    "serve",
    "tls_context",
    "tls_files",
]

log = logging.getLogger("domicile.server")


@dataclass(frozen=True, slots=True)
class TlsFiles:
    cert: Path
    key: Path


# TLS 1.2 suites: forward secret (ECDHE) and authenticated encryption (AES-GCM, ChaCha20-
# Poly1305) only. TLS 1.3's suites are all of that kind and are not touched by this string.
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL:!eNULL"


def tls_context(tls: TlsFiles) -> ssl.SSLContext:
    """G6: the one server context every region serves with: TLS 1.2 or later, strong suites,
    no compression, no renegotiation. Python's own defaults are not relied upon."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(TLS12_CIPHERS)
    context.options |= (ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
                        | ssl.OP_CIPHER_SERVER_PREFERENCE | ssl.OP_SINGLE_ECDH_USE)
    try:
        context.load_cert_chain(tls.cert, tls.key)
    except (OSError, ssl.SSLError) as exc:
        raise InvalidInput(f"the TLS certificate {tls.cert} and key {tls.key} cannot be "
                           f"used: {exc.strerror or exc}", param="tls_cert") from None
    return context


def tls_files(settings: Settings, cert: Path | None = None,
              key: Path | None = None) -> TlsFiles | None:
    """The certificate to serve: `--tls-cert/--tls-key` if given, else `[server]`'s."""
    if (cert is None) != (key is None):
        raise InvalidInput("--tls-cert and --tls-key go together", param="tls_cert")
    if cert is not None and key is not None:
        return TlsFiles(cert, key)
    if settings.server.tls_cert is not None and settings.server.tls_key is not None:
        return TlsFiles(settings.server.tls_cert, settings.server.tls_key)
    return None


def check_plain_http(settings: Settings, regions: Sequence[str], *, tls: TlsFiles | None,
                     insecure_http: bool) -> None:
    """G6: plain HTTP only on loopback addresses, unless the operator says `--insecure-http`
    (TLS ends at a proxy in front, say). Raises `ConfigError` naming the first region that
    would listen elsewhere without a certificate."""
    if tls is not None or insecure_http:
        return
    for name in regions:
        region = settings.region(name)
        if not is_loopback_host(region.host):
            raise ConfigError(
                f"regions.{name}.listen",
                f"region {name} would serve plain HTTP on the non-loopback address "
                f"{region.listen} (G6); give it a certificate with --tls-cert/--tls-key or "
                "[server] tls_cert/tls_key in the config, or pass --insecure-http to serve "
                "without TLS")


def build_region_app(site: Site, region: str, *, secure: bool = False) -> Any:
    """The region's ASGI app: the gateway (`/v1`), with the workspace mounted beside it on the
    same providers (one router, one set of connections). `secure`: served over TLS (the
    workspace's cookies are then `Secure`)."""
    from domicile.admin_api import mount_admin
    from domicile.gateway import create_gateway_app
    from domicile.gateway.ratelimit import rate_limiter_for
    from domicile.inference.providers import build_providers
    from domicile.inference.routing import ModelRouter
    from domicile.workspace.chat import message_limiter_for
    from domicile.workspace_web.app import create_workspace_app
    from domicile.workspace_web.services import build_workspace_services

    store = site.store(region)
    config = site.settings.region(region)
    providers = build_providers(config)
    services = build_workspace_services(site, region, ModelRouter(region, providers))
    # Limits shared by the region's replicas when it has a redis_url, else per process.
    services.chat.limiter = message_limiter_for(config, site.settings.workspace)
    gateway = create_gateway_app(
        site.settings, region, authenticator=site.directory, usage_sink=store,
        content_store=store, fallback_app=create_workspace_app(services, secure=secure),
        providers=providers, rate_limiter=rate_limiter_for(config),
    )
    services.chat.usage = gateway.usage.add  # one usage recorder per region, batched
    return mount_admin(site, region, gateway)  # `/admin/v1`: the whole directory's admin API


def _bind(region: RegionSettings) -> socket.socket:
    family = socket.AF_INET6 if ":" in region.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((region.host, region.port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"regions.{region.name}.listen",
                          f"cannot listen on {region.listen}: {exc.strerror}") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def serve(settings: Settings, regions: Sequence[str] = (), *, workers: int = 1,
          tls: TlsFiles | None = None, insecure_http: bool = False,
          log_level: str = "warning") -> None:
    names = list(regions) or list(settings.regions)
    for name in names:
        settings.region(name)
    check_plain_http(settings, names, tls=tls, insecure_http=insecure_http)
    if tls is not None:
        check_key_file("--tls-key", tls.key)  # G5/G6: a key others may read is refused
        tls_context(tls)  # fail at start, with the file named, not in a worker
    sockets = {name: _bind(settings.regions[name]) for name in prepare_regions(settings, names)}
    if workers <= 1:
        _run_worker(settings, sockets, tls, log_level)
        return
    with _shared_metrics(settings):
        _fork_workers(settings, sockets, tls, log_level, workers)


@contextlib.contextmanager
def _shared_metrics(settings: Settings) -> Generator[None, None, None]:
    """With several workers, each writes its metrics to files in a private folder (0700,
    removed at exit) that any worker's `/metrics` sums up."""
    if not settings.observability.metrics:
        yield
        return
    folder = Path(tempfile.mkdtemp(prefix="domicile-metrics-"))  # mode 0700
    try:
        enable_multiprocess(folder)
        yield
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _fork_workers(settings: Settings, sockets: dict[str, socket.socket], tls: TlsFiles | None,
                  log_level: str, workers: int) -> None:
    children: list[int] = []
    for _ in range(workers):
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child
            try:
                _run_worker(settings, sockets, tls, log_level)
            finally:
                os._exit(0)
        children.append(pid)

    def stop(signum: int, _frame: object) -> None:
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for child in children:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(child, 0)


def prepare_regions(settings: Settings, names: Sequence[str]) -> list[str]:
    """Bring the directory and each named region's store up to date, then check the data
    folder and sweep the served regions' temp blobs (`Site.open_for_serving`), before any
    worker accepts a request. A region that fails is named in one line on stderr and left
    out; the ones that can be served are returned. Raises `StoreUnavailable` if the directory
    or every region fails."""
    site = Site(settings)
    try:
        site.site_secret  # noqa: B018 - a missing secret is the site's error, not a region's
        site.check_key_files()  # G5: a key others may read is refused, never used
        try:
            site.migrate_directory()
        except Exception as exc:
            raise StoreUnavailable(
                f"the directory's database cannot be used: {describe(exc)}") from None
        ready = []
        for name in names:
            try:
                site.migrate_region(name)
            except Exception as exc:
                _announce(settings, f"region {name} not served: {describe(exc)}",
                          logging.ERROR)
            else:
                ready.append(name)
        if ready:  # the data folder's modes checked, crashed uploads' temp blobs swept
            site.open_for_serving(ready)
    finally:
        site.close()
    if not ready:
        raise StoreUnavailable(f"no region can be served ({', '.join(names)}: see above)")
    return ready


def _announce(settings: Settings, line: str, level: int = logging.INFO) -> None:
    """A start-up line on stderr whatever `--log-level` says: plain text, or with
    `log_format = "json"` one JSON object like every log line."""
    if settings.observability.log_format == "json":
        record = logging.LogRecord("domicile.server", level, __file__, 0, line, None, None)
        line = JsonFormatter().format(record)
    print(line, file=sys.stderr, flush=True)


def _run_worker(settings: Settings, sockets: dict[str, socket.socket], tls: TlsFiles | None,
                log_level: str) -> None:
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        pass
    asyncio.run(_serve_regions(settings, sockets, tls, log_level))


async def _serve_regions(settings: Settings, sockets: dict[str, socket.socket],
                         tls: TlsFiles | None, log_level: str) -> None:
    site = Site(settings)
    context = tls_context(tls) if tls is not None else None
    servers = []
    for name, sock in sockets.items():
        config = uvicorn.Config(
            build_region_app(site, name, secure=tls is not None), log_level=log_level,
            # No access log: its lines quote paths and query strings (client text, ids);
            # requests are counted by route template in `/metrics` instead. No log config of
            # uvicorn's own: its lines go through `domicile serve`'s (`configure_logging`).
            access_log=False, log_config=None,
            # The gateway speaks no WebSocket: an upgrade request is plain HTTP to it.
            http=protocol_for(name, settings.server), ws="none", loop="none", lifespan="on",
            server_header=False, date_header=False, proxy_headers=False,
        )
        config.load()
        # uvicorn builds its own context from `ssl_*` files (Python's defaults, plus whatever
        # it sets); the served context is Domicile's, set after `load()`, which would
        # otherwise reset it. `Server.startup` hands `config.ssl` to `create_server`.
        config.ssl = context
        servers.append((_RegionServer(config), sock))
    _announce(settings, "serving " + ", ".join(
        f"{name} on {settings.regions[name].public_url}" for name in sockets))
    loop = asyncio.get_running_loop()

    def stop_all() -> None:
        for server, _sock in servers:
            server.should_exit = True

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop_all)
    try:
        await asyncio.gather(_freeze_heap_when_started([s for s, _ in servers]),
                             *(server.serve(sockets=[sock]) for server, sock in servers))
    finally:
        site.close()


async def _freeze_heap_when_started(servers: Sequence[uvicorn.Server]) -> None:
    """Once every region serves, move start-up objects (the embedding model, imports) out of
    the garbage collector's sight: they live as long as the process, and scanning them on
    every full collection costs the request path throughput."""
    for _ in range(2400):  # at most 2 minutes: a server that never starts also stops this
        if all(server.started for server in servers):
            break
        if any(server.should_exit for server in servers):
            return
        await asyncio.sleep(0.05)
    else:
        return
    gc.collect()
    gc.freeze()


class _RegionServer(uvicorn.Server):
    """One of several servers on one loop: signals are handled once, for all of them."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield
