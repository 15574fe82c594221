"""A Domicile site: `domicile init` makes one; `Site` opens one for commands and servers.

`init` writes a config with regions `eu` and `us`, a key-encryption key per region
(32 random bytes, mode 0600, never overwritten), the directory's secret, and migrated
stores. A failure on a fresh site removes what it wrote: nothing is half-made.

A process that works with a site creates nothing others may read: the umask is 0077 from
the moment it opens one, and files are created 0600, folders 0700 (`storage.private`).
`Site.migrate_region` brings one region's store up to date (`init`, `serve`);
`Site.open_for_serving` is what a server runs once before its workers start.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path

from sqlalchemy import Engine

from domicile.compliance.audit import AuditLog, audit_key
from domicile.compliance.receipts import key_dir_field, signing_key_path
from domicile.config import Settings, load_settings
from domicile.crypto import write_new_kek
from domicile.crypto.providers import open_key_provider
from domicile.errors import ConfigError, InvalidInput
from domicile.failures import describe
from domicile.storage.blobs import open_blob_store
from domicile.storage.db import make_engine, migrate, sqlite_path
from domicile.storage.private import (
    folders_between,
    make_private_dirs,
    restrict_umask,
    tighten,
    written_whole,
)
from domicile.storage.regional import RegionalStore, claim_region
from domicile.tenancy import models as directory_models
from domicile.tenancy.directory import DIRECTORY_CHAIN, Directory
from domicile.tenancy.secrets import CredentialHasher, load_site_secret, write_site_secret

__all__ = ["DEFAULT_SITE_DIR", "Site", "check_key_file", "init_site", "render_config"]

log = logging.getLogger("domicile.site")

DEFAULT_SITE_DIR = Path(".domicile")
CONFIG_NAME = "domicile.toml"
INIT_REGIONS = (("eu", "European Union"), ("us", "United States"))
DEV_TLS_DIR = "tls"  # `init --dev-tls` writes its CA, certificate and key here


def render_config(port_base: int, *, dev_tls: bool = False) -> str:
    """The config `init` writes: the embedded default, two regions, no outside services.
    `dev_tls`: served over TLS with the certificate `init --dev-tls` makes (docs/TLS.md)."""
    scheme = "https" if dev_tls else "http"
    lines = [
        "# Domicile site configuration. Format: docs/CONFIGURATION.md",
        'data_dir = "."',
        "",
    ]
    if dev_tls:
        lines += [
            "# A development certificate signed by tls/ca.pem (docs/TLS.md).",
            "[server]",
            f'tls_cert = "{DEV_TLS_DIR}/server.pem"',
            f'tls_key = "{DEV_TLS_DIR}/server.key"',
            "",
        ]
    lines += [
        "[directory]",
        'database_url = "sqlite:///directory.db"',
        'secret_file = "directory.key"',
    ]
    for offset, (name, display) in enumerate(INIT_REGIONS):
        port = port_base + offset
        lines += [
            "",
            f"[regions.{name}]",
            f'display_name = "{display}"',
            f'listen = "127.0.0.1:{port}"',
            f'public_url = "{scheme}://127.0.0.1:{port}"',
            f'database_url = "sqlite:///{name}/store.db"',
            f'blob_url = "file://{name}/blobs"',
            f'key_provider = {{ kind = "local", path = "{name}/kek.key" }}',
            'default_retention = "zero"',
            "",
            f"[[regions.{name}.providers]]",
            f'name = "{name}-embeddings"',
            'kind = "local-embeddings"',
            'models = ["all-minilm-l6-v2"]',
            "",
            "# dev-echo is a deterministic stand-in for demos and platform tests, not a model.",
            f"[[regions.{name}.providers]]",
            f'name = "{name}-dev"',
            'kind = "dev-echo"',
            'models = ["dev-echo"]',
        ]
    return "\n".join(lines) + "\n"


def init_site(directory: Path = DEFAULT_SITE_DIR, *, port_base: int = 8400,
              force: bool = False, dev_tls: bool = False) -> Settings:
    if not 1 <= port_base <= 65534:
        raise InvalidInput("--port-base must be a port from 1 to 65534", param="port_base")
    config_path = directory / CONFIG_NAME
    if config_path.exists() and not force:
        raise InvalidInput(f"{config_path} already exists; pass --force to rewrite its "
                           "configuration (existing keys are kept)", param="dir")
    restrict_umask()
    fresh = not directory.exists()
    try:
        make_private_dirs(directory)
        if dev_tls:  # before the config names them; an existing key is kept
            from domicile.crypto.devtls import write_dev_tls

            write_dev_tls(directory / DEV_TLS_DIR)
        _write_atomically(config_path, render_config(port_base, dev_tls=dev_tls))
        settings = load_settings(config_path, check_files=False)
        for region in settings.regions.values():
            kek = region.kek_path
            if kek is not None and not kek.exists():  # never overwrite a key
                make_private_dirs(kek.parent)
                write_new_kek(kek)
        if not settings.directory.secret_file.exists():
            write_site_secret(settings.directory.secret_file)
        site = Site(load_settings(config_path))
        site.migrate()
        site.close()
        return site.settings
    except BaseException:
        if fresh:
            shutil.rmtree(directory, ignore_errors=True)
        raise


def _write_atomically(path: Path, text: str) -> None:
    with written_whole(path) as out:
        out.write(text)


def check_key_file(field: str, path: Path) -> None:
    """ConfigError (naming `field`) if group or others may read or write the key at `path`;
    a missing file is left to whoever needs it (a signing key is made on first use)."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return
    if mode & 0o077:
        raise ConfigError(field, f"{path} may be read or written by others (mode "
                          f"{oct(mode & 0o777)}); a key file must be 0600. Check who "
                          f"could have copied it, then `chmod 600 {path}`")


class Site:
    """The directory and the regional stores of one configuration, opened lazily."""

    def __init__(self, settings: Settings) -> None:
        restrict_umask()
        self.settings = settings
        self._stores: dict[str, RegionalStore] = {}
        self._engines: list[Engine] = []

    @cached_property
    def directory_engine(self) -> Engine:
        engine = make_engine(self.settings.directory.database_url)
        self._engines.append(engine)
        return engine

    @cached_property
    def site_secret(self) -> bytes:
        secret_file = self.settings.directory.secret_file
        try:
            return load_site_secret(secret_file)
        except FileNotFoundError:
            raise ConfigError("directory.secret_file", f"{secret_file} does not exist") from None
        except ValueError as exc:
            raise ConfigError("directory.secret_file", str(exc)) from None

    @cached_property
    def directory_audit(self) -> AuditLog:
        return AuditLog(self.directory_engine, DIRECTORY_CHAIN, directory_models.AUDIT_LOG,
                        directory_models.AUDIT_HEAD, key=audit_key(self.site_secret))

    @cached_property
    def directory(self) -> Directory:
        return Directory(
            self.directory_engine, CredentialHasher(self.site_secret), self.settings.regions,
            audit_for=self.audit_log,
            default_retention=lambda region: self.settings.regions[region].default_retention,
            on_tenant_created=self._create_tenant_key,
        )

    def _create_tenant_key(self, region: str, tenant: str) -> None:
        self.store(region).envelope.create_tenant_key(tenant)

    def audit_log(self, chain: str) -> AuditLog:
        return self.directory_audit if chain == DIRECTORY_CHAIN else self.store(chain).audit

    def audit_chain_names(self, region: str | None = None) -> list[str]:
        """The chains `audit_log` opens: `region`'s, or the directory's and every region's."""
        if region is not None:
            return [self.settings.region(region).name]
        return [DIRECTORY_CHAIN, *self.settings.regions]

    def store(self, region: str) -> RegionalStore:
        if region not in self._stores:
            config = self.settings.region(region)
            blobs = open_blob_store(config.blob_url, field=f"regions.{region}.blob_url")
            engine = make_engine(config.database_url)
            self._engines.append(engine)
            keys = open_key_provider(config)
            self._stores[region] = RegionalStore(region, engine, blobs, keys,
                                                 audit_key=audit_key(self.site_secret),
                                                 key_cache_s=config.key_cache_s)
        return self._stores[region]

    def migrate(self) -> None:
        """Apply every migration and stamp each regional store with its region."""
        self.migrate_directory()
        for name in self.settings.regions:
            self.migrate_region(name)

    def migrate_directory(self) -> None:
        migrate(self.directory_engine, "directory")

    def migrate_region(self, name: str) -> None:
        """Bring the region's store to the newest schema and check (or stamp) that it is this
        region's."""
        store = self.store(name)
        migrate(store.engine, "region")
        claim_region(store.engine, name)

    def open_for_serving(self, regions: Sequence[str] = ()) -> None:
        """Run once by a server before its workers start: check the modes of the site's own
        files and folders, tightening any looser than 0600/0700, and sweep the temp blobs that
        crashed uploads left in the blob stores of `regions` (default: all). Needs no
        database. Logs a line for each; a failure here is logged, never fatal."""
        try:
            tightened, failed = tighten(*self._private_paths())
        except OSError as exc:
            log.warning("data folder: modes not checked (%s)", describe(exc, text=False))
        else:
            if tightened or failed:
                log.warning("data folder: %d files and folders were looser than 0600/0700 and "
                            "were tightened; %d could not be changed", tightened, failed)
            else:
                log.info("data folder: every file is 0600 and every folder 0700")
        for name in regions or self.settings.regions:
            try:
                # file://: temp files no writer holds; s3://: multipart uploads idle an hour.
                swept = open_blob_store(self.settings.region(name).blob_url,
                                        field=f"regions.{name}.blob_url").sweep_staged()
            except Exception as exc:  # an S3 store out of reach: ClientError, BotoCoreError
                log.warning("region %s: temporary blobs not swept (%s)", name,
                            describe(exc, text=False))
                continue
            if swept:
                log.warning("region %s: removed %d temporary blobs of interrupted uploads",
                            name, swept)

    def key_files(self) -> list[tuple[str, Path]]:
        """(config field, path) of every key the site keeps: the directory's secret, each
        region's key-encryption key, the audit chains' signing keys and the TLS key."""
        settings = self.settings
        keys = [("directory.secret_file", settings.directory.secret_file)]
        keys += [(f"regions.{name}.key_provider.path", region.kek_path)
                 for name, region in settings.regions.items() if region.kek_path is not None]
        for chain in (DIRECTORY_CHAIN, *settings.regions):
            field = ("directory.secret_file" if chain == DIRECTORY_CHAIN
                     else key_dir_field(settings, chain))
            with contextlib.suppress(ConfigError):  # a shared one: `audit head` says so
                keys.append((field, signing_key_path(settings, chain)))
        if settings.server.tls_key is not None:
            keys.append(("server.tls_key", settings.server.tls_key))
        return keys

    def check_key_files(self) -> None:
        """G5: refuse to serve with a key file that group or others may read or write. It is
        not tightened silently: a key that was readable may have been copied, and only the
        operator can decide whether it must be replaced."""
        for field, path in self.key_files():
            check_key_file(field, path)

    def _private_paths(self) -> tuple[list[Path], list[Path]]:
        """(paths, trees) for `tighten`: the files Domicile keeps (databases with their SQLite
        companions, keystores) and the folders it made for them and for the key files inside
        the data folder; the blob folders whole. Nothing else: the data folder may be `.`
        beside a config in a repository or under /etc. Key files are never tightened: a key
        others could read is refused (`check_key_files`)."""
        files: list[Path] = []  # not the keys: see `check_key_files`
        databases = [sqlite_path(self.settings.directory.database_url)]
        trees = []
        for region in self.settings.regions.values():
            databases += (sqlite_path(region.database_url), region.keystore_path)
            if region.blob_path is not None:
                trees.append(region.blob_path)
        files += (path.with_name(path.name + suffix) for path in databases if path is not None
                  for suffix in ("", "-wal", "-shm", "-journal"))
        data_dir = self.settings.data_dir
        files = [Path(os.path.abspath(path)) for path in files]
        # A blob folder configured as the data folder (or above it) is not walked: it would
        # hold what is not ours.
        trees = [path for path in map(Path, map(os.path.abspath, trees))
                 if not data_dir.is_relative_to(path)]
        keys = [Path(os.path.abspath(path)) for _field, path in self.key_files()]
        folders = [folder for path in (*files, *trees, *keys)
                   for folder in folders_between(data_dir, path)]
        return list(dict.fromkeys((*folders, *files))), trees  # once each: eu/ holds several

    def close(self) -> None:
        for engine in self._engines:
            engine.dispose()
