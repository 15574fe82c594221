"""Configuration: `domicile.toml` parsed once, at start, into frozen typed settings.

The one place settings enter the program (nothing reads the environment or files deeper in
the call stack, except a provider's API key, read here by name). Every refusal is a
`ConfigError` naming the field, e.g. ``regions.eu.providers[1].base_url``.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar
from urllib.parse import parse_qs, urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from domicile.errors import ConfigError

__all__ = [
    "CONFIG_ENV",
    "AwsKmsSettings",
    "Capability",
    "DirectorySettings",
    "KeyProviderSettings",
    "ObservabilitySettings",
    "ProviderSettings",
    "RegionSettings",
    "ServerSettings",
    "Settings",
    "VaultTransitSettings",
    "WorkspaceSettings",
    "find_config",
    "load_settings",
    "parse_settings",
]

M = TypeVar("M", bound=BaseModel)

CONFIG_ENV = "DOMICILE_CONFIG"
Capability = Literal["chat", "embeddings", "vision", "images"]
ProviderKind = Literal["openai-compatible", "local-embeddings", "dev-echo"]

DEFAULT_CAPABILITIES: Mapping[str, tuple[Capability, ...]] = {
    "openai-compatible": ("chat",),
    "local-embeddings": ("embeddings",),
    "dev-echo": ("chat", "embeddings", "vision", "images"),
}
# A region name is part of key prefixes (`dk-eu-…`) and URLs: keep it to a simple token.
# `s3://bucket/prefix?…`: the endpoint (an S3-compatible service), the bucket's region, and
# server-side encryption asked of the service as well as ours (defence in depth).
S3_OPTIONS = frozenset({"endpoint_url", "region", "region_name", "sse", "sse_kms_key_id"})
REGION_NAME = re.compile(r"[a-z][a-z0-9]{1,15}")
RESERVED_REGION_NAMES = frozenset({"global", "directory"})


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ProviderSettings(_Frozen):
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]
    kind: ProviderKind
    models: Annotated[tuple[str, ...], Field(min_length=1)]
    base_url: str | None = None
    api_key_env: str | None = None
    capabilities: tuple[Capability, ...] | None = None
    ca_file: Path | None = None
    insecure_http: bool = False
    timeout_s: Annotated[float, Field(gt=0, le=3600)] = 60.0
    # The longest a stream may stay silent between two chunks (default: `timeout_s`).
    stream_idle_timeout_s: Annotated[float, Field(gt=0, le=3600)] | None = None
    # Connections open to this provider at once, and how long a request may wait for one
    # before the region answers 503 `region_busy` (capacity, not an outage).
    max_connections: Annotated[int, Field(ge=1, le=65536)] = 256
    pool_timeout_s: Annotated[float, Field(gt=0, le=600)] = 5.0
    weight: Annotated[int, Field(ge=1, le=1000)] = 1

    @property
    def effective_stream_idle_timeout_s(self) -> float:
        return self.stream_idle_timeout_s or self.timeout_s

    @property
    def effective_capabilities(self) -> frozenset[Capability]:
        return frozenset(self.capabilities or DEFAULT_CAPABILITIES[self.kind])

    def api_key(self) -> SecretStr | None:
        """The provider's API key, read from the environment variable the config names."""
        if not self.api_key_env:
            return None
        value = os.environ.get(self.api_key_env)
        return SecretStr(value) if value else None


class KeyProviderSettings(_Frozen):
    """The embedded default: a 32-byte KEK file (`path`, relative to data_dir)."""

    kind: Literal["local"] = "local"
    path: Path


class AwsKmsSettings(_Frozen):
    """AWS KMS (or an emulator speaking its API): data keys from GenerateDataKey under
    `key_id`, unwrapped with Decrypt; credentials from boto3's usual chain, never here."""

    kind: Literal["aws-kms"]
    key_id: Annotated[str, Field(min_length=1, max_length=2048)]
    region: Annotated[str, Field(pattern=r"^[a-z]{2}(-[a-z]+)+-[0-9]+$")]
    endpoint_url: str | None = None


class VaultTransitSettings(_Frozen):
    """HashiCorp Vault / OpenBao transit engine: data keys from `datakey/plaintext/<key_name>`,
    unwrapped with `decrypt/<key_name>`; the token is read from the env var `token_env`."""

    kind: Literal["vault-transit"]
    url: str
    key_name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")]
    mount: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_./-]{0,127}$")] = "transit"
    token_env: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")] = (
        "VAULT_TOKEN"  # noqa: S105 - the name of an env var, not a secret
    )
    namespace: str | None = None
    ca_file: Path | None = None
    timeout_s: Annotated[float, Field(gt=0, le=600)] = 10.0

    def token(self) -> SecretStr | None:
        """The Vault token, read from the environment variable the config names."""
        value = os.environ.get(self.token_env)
        return SecretStr(value) if value else None


AnyKeyProvider = Annotated[
    KeyProviderSettings | AwsKmsSettings | VaultTransitSettings, Field(discriminator="kind")
]


class RegionSettings(_Frozen):
    name: str
    display_name: str
    listen: str
    public_url: str
    database_url: str
    blob_url: str
    key_provider: AnyKeyProvider
    # Where the wrapped data keys live. Default: a SQLite file beside a local KEK. A
    # postgresql:// region must name a shared keystore database here (every replica reads
    # the same keys; back it up on its own schedule: docs/deploy.md).
    keystore_url: str | None = None
    # How long a process keeps an unwrapped data key: the bound within which a shred made
    # by another replica (or process) is seen everywhere (docs/KEYS.md).
    key_cache_s: Annotated[float, Field(ge=0, le=3600)] = 60.0
    # Shared rate limits and quotas for the region's replicas; unset: in-memory, per process.
    redis_url: str | None = None
    # Folder of the region's own key files (the audit signing key); default: the folder of
    # a local KEK, else <data_dir>/<region>.
    key_dir: Path | None = None
    default_retention: Literal["zero", "regional"] = "zero"
    providers: tuple[ProviderSettings, ...] = ()

    @property
    def host(self) -> str:
        return _split_listen(self.listen)[0]

    @property
    def port(self) -> int:
        return _split_listen(self.listen)[1]

    @property
    def keystore_path(self) -> Path | None:
        """The SQLite keystore file (absolute after loading), else None (a shared keystore)."""
        url = self.keystore_url
        return Path(url.removeprefix("sqlite:///")) if url and url.startswith("sqlite:///") \
            else None

    @property
    def kek_path(self) -> Path | None:
        """The local KEK file, else None (the KEK is held by a KMS)."""
        provider = self.key_provider
        return provider.path if isinstance(provider, KeyProviderSettings) else None

    @property
    def blob_path(self) -> Path | None:
        """The folder of a `file://` blob store (absolute after loading), else None."""
        parts = urlsplit(self.blob_url)
        return Path(parts.netloc + parts.path) if parts.scheme == "file" else None

    @field_validator("public_url")
    @classmethod
    def _public_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http(s) URL")
        return value.rstrip("/")

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        _split_listen(value)
        return value


class ServerSettings(_Frozen):
    """Bounds every region's HTTP server applies before a request reaches the app."""

    # Request line and headers together; past it: 431.
    max_header_bytes: Annotated[int, Field(ge=4096, le=16 * 1024 * 1024)] = 64 * 1024
    # From a connection's first byte (or the end of its last answer) to the end of the headers.
    header_timeout_s: Annotated[float, Field(gt=0, le=3600)] = 10.0
    # An idle keep-alive connection is closed after this long.
    keepalive_timeout_s: Annotated[float, Field(gt=0, le=3600)] = 5.0
    # Open connections per region (per worker); past it a new one is answered 503 and closed.
    max_connections: Annotated[int, Field(ge=1, le=1_000_000)] = 1000
    # The certificate (chain, PEM) and its key every region serves TLS with, relative to
    # data_dir; both or neither (`--tls-cert/--tls-key` take precedence).
    tls_cert: Path | None = None
    tls_key: Path | None = None


class WorkspaceSettings(_Frozen):
    """The chat workspace's limits, the same in every region (`[workspace]`)."""

    # An uploaded document (text, Markdown, PDF); past it: 413.
    max_file_bytes: Annotated[int, Field(ge=1024, le=1024 * 1024 * 1024)] = 25 * 1024 * 1024
    # An uploaded image (PNG, JPEG, WebP, GIF); past it: 413.
    max_image_bytes: Annotated[int, Field(ge=1024, le=256 * 1024 * 1024)] = 10 * 1024 * 1024
    # Messages a member may send per minute (each answer streamed by a model); past it: 429.
    messages_per_minute: Annotated[int, Field(ge=1, le=100_000)] = 30
    # A browser session ends this long after sign-in.
    session_hours: Annotated[float, Field(gt=0, le=24 * 90)] = 12.0
    # Failed sign-ins allowed per account, and per client address, in `login_window_s`.
    login_failures_per_account: Annotated[int, Field(ge=1, le=1000)] = 5
    login_failures_per_address: Annotated[int, Field(ge=1, le=100_000)] = 20
    login_window_s: Annotated[float, Field(gt=0, le=86_400)] = 900.0
    # How often `domicile serve` runs the retention sweeper.
    retention_sweep_interval_s: Annotated[float, Field(gt=0, le=7 * 86_400)] = 3600.0
    # Passages of a GPT's knowledge files given to the model with each message.
    knowledge_passages: Annotated[int, Field(ge=1, le=50)] = 4


class ObservabilitySettings(_Frozen):
    """Metrics, logs and traces: counts and timings only, never content (`[observability]`)."""

    # `GET /metrics` on every region's address (Prometheus text format). Who may read it:
    # with `metrics_token_env`, whoever presents `Authorization: Bearer <that token>`;
    # without, loopback clients only (so nothing is exposed off the machine by default).
    metrics: bool = True
    # The name of the env var holding the scraper's bearer token (never the token itself).
    metrics_token_env: Annotated[
        str | None, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")] = None
    # "text" for people, "json" for log collectors (one object per line).
    log_format: Literal["text", "json"] = "text"
    # Send OpenTelemetry traces (spans named by route template) to this OTLP/HTTP endpoint.
    otlp_endpoint: str | None = None

    def metrics_token(self) -> SecretStr | None:
        """The scraper's bearer token, read from the env var `metrics_token_env` names;
        None when no env var is named or it is empty."""
        if self.metrics_token_env is None:
            return None
        value = os.environ.get(self.metrics_token_env)
        return SecretStr(value) if value else None


class DirectorySettings(_Frozen):
    database_url: str
    # The per-site secret that keys the HMAC of API keys and workspace tokens.
    secret_file: Path = Path("directory.key")


class Settings(_Frozen):
    config_path: Path
    data_dir: Path
    directory: DirectorySettings
    regions: Mapping[str, RegionSettings]
    server: ServerSettings = ServerSettings()
    workspace: WorkspaceSettings = WorkspaceSettings()
    observability: ObservabilitySettings = ObservabilitySettings()

    def region(self, name: str) -> RegionSettings:
        try:
            return self.regions[name]
        except KeyError:
            known = ", ".join(sorted(self.regions)) or "none"
            raise ConfigError("region", f"unknown region {name!r} (configured: {known})") from None


def _split_listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError("must be HOST:PORT with a port from 1 to 65535")
    return host.strip("[]"), int(port)


def is_loopback_host(host: str | None) -> bool:
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def find_config(explicit: str | os.PathLike[str] | None) -> Path:
    """`--config`, else `$DOMICILE_CONFIG`, else `domicile.toml`, else `.domicile/domicile.toml`."""
    if explicit:
        return Path(explicit)
    from_env = os.environ.get(CONFIG_ENV)
    if from_env:
        return Path(from_env)
    for candidate in (Path("domicile.toml"), Path(".domicile") / "domicile.toml"):
        if candidate.exists():
            return candidate
    return Path("domicile.toml")


def load_settings(path: str | os.PathLike[str], *, check_files: bool = True) -> Settings:
    config_path = Path(path)
    try:
        raw = tomllib.loads(config_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError("config", f"no configuration at {config_path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("config", f"{config_path} is not valid TOML: {exc}") from None
    return parse_settings(raw, config_path=config_path, check_files=check_files)


def parse_settings(
    raw: Mapping[str, Any], *, config_path: Path, check_files: bool = True
) -> Settings:
    allowed = {"data_dir", "directory", "regions", "server", "workspace", "observability"}
    for key in raw:
        if key not in allowed:
            raise ConfigError(key, "unknown key")
    base = config_path.resolve().parent
    data_dir = (base / str(raw.get("data_dir", "."))).resolve()

    directory_raw = _table(raw, "directory")
    regions_raw = _table(raw, "regions")
    if not regions_raw:
        raise ConfigError("regions", "at least one region must be configured")

    directory = _validate(DirectorySettings, dict(directory_raw), "directory")
    directory = directory.model_copy(
        update={
            "database_url": _database_url(directory.database_url, data_dir,
                                          "directory.database_url"),
            "secret_file": data_dir / directory.secret_file,
        }
    )

    regions: dict[str, RegionSettings] = {}
    ports: dict[tuple[str, int], str] = {}
    for name, region_raw in regions_raw.items():
        prefix = f"regions.{name}"
        if not isinstance(region_raw, Mapping):
            raise ConfigError(prefix, "must be a table")
        if name in RESERVED_REGION_NAMES or not REGION_NAME.fullmatch(name):
            raise ConfigError(prefix, "a region name is 2-16 lowercase letters or digits, "
                              "starting with a letter, and not 'global' or 'directory'")
        region = _validate(RegionSettings, {"name": name, **region_raw}, prefix)
        region = _resolve_region(region, data_dir, prefix, check_files=check_files)
        port_key = (region.host, region.port)
        # Same port on any host collides with a wildcard bind; be strict.
        for (host, port), other in ports.items():
            wildcard = "0.0.0.0" in (host, region.host)  # noqa: S104 - comparing, not binding
            if port == region.port and (host == region.host or wildcard):
                raise ConfigError(f"{prefix}.listen",
                                  f"port {port} is already used by regions.{other}.listen")
        ports[port_key] = name
        # Two regions (or a region and the directory) in one database would mix residencies.
        for sibling in regions.values():
            if sibling.database_url == region.database_url:
                raise ConfigError(f"{prefix}.database_url",
                                  f"regions.{sibling.name} uses the same database")
        if region.database_url == directory.database_url:
            raise ConfigError(f"{prefix}.database_url", "the directory uses the same database")
        for sibling in regions.values():
            if sibling.keystore_url == region.keystore_url:
                raise ConfigError(f"{prefix}.keystore_url",
                                  f"regions.{sibling.name} uses the same keystore")
            if _blob_stores_overlap(sibling.blob_url, region.blob_url):
                # One region's sweep and erasure would reach into the other's content.
                raise ConfigError(f"{prefix}.blob_url",
                                  f"overlaps regions.{sibling.name}.blob_url")
        regions[name] = region
    # Every keystore against every content database, whichever region came first.
    contents = {r.database_url: r.name for r in regions.values()}
    contents[directory.database_url] = "directory"
    for region in regions.values():
        if region.keystore_url in contents:
            raise ConfigError(f"regions.{region.name}.keystore_url",
                              f"is the content database of {contents[region.keystore_url]}: a "
                              "content database is not a keystore")

    server_raw = raw.get("server", {})
    if not isinstance(server_raw, Mapping):
        raise ConfigError("server", "must be a table")
    server = _validate(ServerSettings, dict(server_raw), "server")
    server = _resolve_server_tls(server, data_dir, check_files=check_files)
    workspace_raw = raw.get("workspace", {})
    if not isinstance(workspace_raw, Mapping):
        raise ConfigError("workspace", "must be a table")
    workspace = _validate(WorkspaceSettings, dict(workspace_raw), "workspace")
    observability_raw = raw.get("observability", {})
    if not isinstance(observability_raw, Mapping):
        raise ConfigError("observability", "must be a table")
    observability = _validate(ObservabilitySettings, dict(observability_raw), "observability")
    if observability.otlp_endpoint is not None:
        _http_url(observability.otlp_endpoint, "observability.otlp_endpoint")
    return Settings(config_path=config_path.resolve(), data_dir=data_dir, directory=directory,
                    regions=regions, server=server, workspace=workspace,
                    observability=observability)


def _resolve_server_tls(server: ServerSettings, data_dir: Path, *,
                        check_files: bool) -> ServerSettings:
    if server.tls_cert is None and server.tls_key is None:
        return server
    if server.tls_cert is None or server.tls_key is None:
        missing = "tls_cert" if server.tls_cert is None else "tls_key"
        raise ConfigError(f"server.{missing}", "tls_cert and tls_key go together")
    cert, key = data_dir / server.tls_cert, data_dir / server.tls_key
    if check_files:
        for field, path, what in (("tls_cert", cert, "certificate"), ("tls_key", key, "key")):
            if not path.is_file():
                raise ConfigError(f"server.{field}", f"TLS {what} file {path} does not exist")
    return server.model_copy(update={"tls_cert": cert, "tls_key": key})


def _resolve_key_provider(
    region: RegionSettings, data_dir: Path, prefix: str, *, check_files: bool
) -> dict[str, Any]:
    """The resolved key provider, keystore URL and key folder of a region."""
    provider = region.key_provider
    field = f"{prefix}.key_provider"
    if isinstance(provider, KeyProviderSettings):
        key_path = data_dir / provider.path
        if check_files and not key_path.is_file():
            raise ConfigError(f"{field}.path", f"key file {key_path} does not exist")
        provider = provider.model_copy(update={"path": key_path})
        default_keystore = f"sqlite:///{key_path.with_name(key_path.name + '.keystore.db')}"
        key_dir = key_path.parent
    else:
        if isinstance(provider, AwsKmsSettings) and provider.endpoint_url is not None:
            _http_url(provider.endpoint_url, f"{field}.endpoint_url", tls_unless_loopback=True)
        if isinstance(provider, VaultTransitSettings):
            _http_url(provider.url, f"{field}.url", tls_unless_loopback=True)
            if provider.ca_file is not None:
                ca_file = data_dir / provider.ca_file
                if check_files and not ca_file.is_file():
                    raise ConfigError(f"{field}.ca_file", f"CA file {ca_file} does not exist")
                provider = provider.model_copy(update={"ca_file": ca_file})
        default_keystore = None
        key_dir = data_dir / region.name
    keystore = region.keystore_url
    if keystore is None:
        if region.database_url.split(":", 1)[0].startswith("postgres"):
            raise ConfigError(f"{prefix}.keystore_url", "a postgresql:// region keeps its "
                              "wrapped data keys in a keystore every replica shares: name its "
                              "database here (postgresql://…), apart from the content's")
        if default_keystore is None:
            raise ConfigError(f"{prefix}.keystore_url", "a region whose KEK is in a KMS names "
                              "where its wrapped data keys live (sqlite:///… or postgresql://…)")
        keystore = default_keystore
    else:
        keystore = _database_url(keystore, data_dir, f"{prefix}.keystore_url")
        if region.database_url.startswith("postgres") and keystore.startswith("sqlite"):
            raise ConfigError(f"{prefix}.keystore_url", "a postgresql:// region's replicas "
                              "share one keystore: a local SQLite file would diverge")
        if keystore == _database_url(region.database_url, data_dir, f"{prefix}.database_url"):
            raise ConfigError(f"{prefix}.keystore_url", "the keystore must not be the region's "
                              "content database: a copy of the content must not carry its keys")
    if region.key_dir is not None:
        key_dir = data_dir / region.key_dir
    if region.redis_url is not None:
        parts = urlsplit(region.redis_url)
        if parts.scheme not in ("redis", "rediss", "unix") or (
                parts.scheme != "unix" and not parts.hostname):
            raise ConfigError(f"{prefix}.redis_url",
                              "must be a redis://, rediss:// or unix:// URL")
    return {"key_provider": provider, "keystore_url": keystore, "key_dir": key_dir}


def _http_url(url: str, field: str, *, tls_unless_loopback: bool = False) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(field, "must be an http(s) URL")
    if parts.username or parts.password:
        raise ConfigError(field, "must not carry credentials")
    if tls_unless_loopback and parts.scheme == "http" and not is_loopback_host(parts.hostname):
        raise ConfigError(field, f"plain http to the non-loopback host {parts.hostname!r} is "
                          "refused (G6); use https")


def _resolve_region(
    region: RegionSettings, data_dir: Path, prefix: str, *, check_files: bool
) -> RegionSettings:
    keys = _resolve_key_provider(region, data_dir, prefix, check_files=check_files)
    seen: set[str] = set()
    providers = []
    for index, provider in enumerate(region.providers):
        field = f"{prefix}.providers[{index}]"
        if provider.name in seen:
            raise ConfigError(f"{field}.name", f"provider name {provider.name!r} is used twice")
        seen.add(provider.name)
        providers.append(_resolve_provider(provider, data_dir, field, check_files=check_files))
    return region.model_copy(
        update={
            "database_url": _database_url(region.database_url, data_dir, f"{prefix}.database_url"),
            "blob_url": _blob_url(region.blob_url, data_dir, f"{prefix}.blob_url"),
            **keys,
            "providers": tuple(providers),
        }
    )


def _resolve_provider(
    provider: ProviderSettings, data_dir: Path, field: str, *, check_files: bool
) -> ProviderSettings:
    if provider.kind != "openai-compatible":
        if provider.base_url is not None:
            raise ConfigError(f"{field}.base_url", f"a {provider.kind} provider takes no base_url")
        return provider
    if not provider.base_url:
        raise ConfigError(f"{field}.base_url", "an openai-compatible provider needs a base_url")
    parts = urlsplit(provider.base_url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{field}.base_url", "must be an http(s) URL")
    if parts.username or parts.password:
        # A credential in a URL ends up in reprs and logs; keys come from `api_key_env`.
        raise ConfigError(f"{field}.base_url",
                          "must not carry credentials; name an env var in api_key_env")
    if parts.scheme == "http" and not provider.insecure_http and not is_loopback_host(
        parts.hostname
    ):
        raise ConfigError(
            f"{field}.base_url",
            f"plain http to the non-loopback host {parts.hostname!r} is refused (G6); "
            "use https, or set insecure_http = true for this provider",
        )
    update: dict[str, Any] = {"base_url": provider.base_url.rstrip("/")}
    if provider.ca_file is not None:
        ca_file = data_dir / provider.ca_file
        if check_files and not ca_file.is_file():
            raise ConfigError(f"{field}.ca_file", f"CA file {ca_file} does not exist")
        update["ca_file"] = ca_file
    return provider.model_copy(update=update)


def _database_url(url: str, data_dir: Path, field: str) -> str:
    parts = urlsplit(url)
    if parts.scheme == "sqlite":
        # sqlite:///relative/path or sqlite:////absolute/path, as SQLAlchemy spells them.
        if parts.netloc or not parts.path.startswith("/") or parts.path == "/":
            raise ConfigError(field, "a SQLite URL reads sqlite:///relative/path.db")
        path = Path(parts.path[1:])
        return f"sqlite:///{(data_dir / path).resolve()}"
    if parts.scheme in ("postgresql", "postgres", "postgresql+psycopg"):
        if not parts.path.strip("/"):
            raise ConfigError(field, "a PostgreSQL URL must name its database")
        rest = url.split("://", 1)[1]
        return f"postgresql+psycopg://{rest}"
    raise ConfigError(field, f"unsupported database URL scheme {parts.scheme!r} "
                      "(use sqlite:/// or postgresql://)")


def _blob_url(url: str, data_dir: Path, field: str) -> str:
    parts = urlsplit(url)
    if parts.scheme == "file":
        path = Path(parts.netloc + parts.path)
        return f"file://{(data_dir / path).resolve()}"
    if parts.scheme == "s3":
        if not parts.netloc:
            raise ConfigError(field, "an S3 URL names its bucket: s3://bucket/prefix")
        options = parse_qs(parts.query, keep_blank_values=True)
        unknown = set(options) - S3_OPTIONS
        if unknown:
            raise ConfigError(field, f"unknown S3 option {sorted(unknown)[0]!r}")
        for name, values in options.items():
            if len(values) != 1 or not values[0]:
                raise ConfigError(field, f"S3 option {name!r} takes exactly one value")
        endpoint = options.get("endpoint_url", [None])[0]
        if endpoint is not None:
            _http_url(endpoint, field, tls_unless_loopback=True)
        sse = options.get("sse", [None])[0]
        if sse not in (None, "AES256", "aws:kms"):
            raise ConfigError(field, "sse is AES256 or aws:kms")
        if "sse_kms_key_id" in options and sse != "aws:kms":
            raise ConfigError(field, "sse_kms_key_id needs sse=aws:kms")
        return url
    raise ConfigError(field, f"unsupported blob URL scheme {parts.scheme!r} (use file:// or s3://)")


def _blob_stores_overlap(first: str, second: str) -> bool:
    """Whether two resolved blob URLs name the same store or one inside the other (a folder
    in a folder; a bucket prefix under another of the same bucket)."""
    def place(url: str) -> tuple[str, str]:
        parts = urlsplit(url)
        return f"{parts.scheme}://{parts.netloc}", parts.path.strip("/")
    (home_a, path_a), (home_b, path_b) = place(first), place(second)
    if home_a != home_b:
        return False
    return (path_a == path_b or not path_a or not path_b
            or path_a.startswith(path_b + "/") or path_b.startswith(path_a + "/"))


def _table(raw: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = raw.get(key)
    if value is None:
        raise ConfigError(key, "missing")
    if not isinstance(value, Mapping):
        raise ConfigError(key, "must be a table")
    return value



def _validate(model: type[M], data: dict[str, Any], prefix: str) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        error = exc.errors()[0]
        field = prefix + "".join(
            f"[{part}]" if isinstance(part, int) else f".{part}" for part in error["loc"]
        )
        message = "unknown key" if error["type"] == "extra_forbidden" else error["msg"]
        raise ConfigError(field, message) from None
