"""Configuration: a wrong config is refused at start with a message naming the field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from domicile.config import load_settings, parse_settings
from domicile.errors import ConfigError
from domicile.site import render_config


def write_site(tmp_path: Path, body: str) -> Path:
    for region in ("eu", "us"):
        (tmp_path / region).mkdir(exist_ok=True)
        (tmp_path / region / "kek.key").write_bytes(b"k" * 32)
    config = tmp_path / "domicile.toml"
    config.write_text(body)
    return config


@pytest.fixture
def good_config(tmp_path: Path) -> Path:
    return write_site(tmp_path, render_config(8400))


def refused(tmp_path: Path, body: str) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        load_settings(write_site(tmp_path, body))
    return caught.value


def test_init_config_loads_with_paths_resolved_against_data_dir(good_config: Path) -> None:
    settings = load_settings(good_config)
    eu = settings.regions["eu"]
    assert eu.port == 8400 and settings.regions["us"].port == 8401
    assert eu.database_url == f"sqlite:///{good_config.parent.resolve()}/eu/store.db"
    assert eu.key_provider.path == good_config.parent.resolve() / "eu" / "kek.key"
    assert [p.kind for p in eu.providers] == ["local-embeddings", "dev-echo"]
    assert settings.regions["eu"].providers[1].effective_capabilities >= {"chat", "images"}


def test_settings_are_frozen(good_config: Path) -> None:
    settings = load_settings(good_config)
    with pytest.raises(Exception):
        settings.regions["eu"].listen = "127.0.0.1:1"  # type: ignore[misc]


@pytest.mark.parametrize(("edit", "field"), [
    (lambda s: "colour = 'blue'\n" + s, "colour"),
    (lambda s: s.replace('default_retention = "zero"', 'default_retention = "zero"\nflavour = 1',
                         1),
     "regions.eu.flavour"),
    (lambda s: s.replace('listen = "127.0.0.1:8401"', 'listen = "127.0.0.1:8400"'),
     "regions.us.listen"),
    (lambda s: s.replace('database_url = "sqlite:///eu/store.db"', 'database_url = "mysql://x/y"'),
     "regions.eu.database_url"),
    (lambda s: s.replace('path = "eu/kek.key"', 'path = "eu/missing.key"'),
     "regions.eu.key_provider.path"),
    (lambda s: s.replace('default_retention = "zero"', 'default_retention = "forever"', 1),
     "regions.eu.default_retention"),
    (lambda s: s.replace('database_url = "sqlite:///us/store.db"',
                         'database_url = "sqlite:///eu/store.db"'), "regions.us.database_url"),
    (lambda s: s.replace('kind = "dev-echo"', 'kind = "magic"', 1), "regions.eu.providers[1].kind"),
    (lambda s: s.replace("[regions.us]", "[regions.GLOBAL]"), "regions.GLOBAL"),
])
def test_bad_config_is_refused_naming_the_field(tmp_path: Path, edit: Any, field: str) -> None:
    error = refused(tmp_path, edit(render_config(8400)))
    assert error.field == field
    assert str(error).startswith(field)
    assert error.exit_code == 2


def provider_block(**fields: str) -> str:
    body = "\n".join(f"{k} = {v}" for k, v in fields.items())
    block = f"[[regions.eu.providers]]\n{body}\n\n[regions.us]"
    return render_config(8400).replace("[regions.us]", block)


def test_plain_http_to_a_remote_provider_is_refused(tmp_path: Path) -> None:
    error = refused(tmp_path, provider_block(
        name='"eu-remote"', kind='"openai-compatible"', base_url='"http://llm.example.com/v1"',
        models='["m"]'))
    assert error.field == "regions.eu.providers[2].base_url"
    assert "insecure_http" in str(error)


def test_plain_http_is_allowed_to_loopback_or_when_marked_insecure(tmp_path: Path) -> None:
    load_settings(write_site(tmp_path, provider_block(
        name='"eu-local"', kind='"openai-compatible"', base_url='"http://127.0.0.1:9/v1"',
        models='["m"]')))
    settings = load_settings(write_site(tmp_path, provider_block(
        name='"eu-lan"', kind='"openai-compatible"', base_url='"http://10.1.2.3/v1"',
        insecure_http="true", models='["m"]')))
    assert settings.regions["eu"].providers[2].insecure_http


def test_a_provider_outside_any_region_is_refused(tmp_path: Path) -> None:
    body = render_config(8400) + '\n[[providers]]\nname = "x"\nkind = "dev-echo"\nmodels = ["m"]\n'
    assert refused(tmp_path, body).field == "providers"


def test_openai_compatible_provider_needs_a_base_url(tmp_path: Path) -> None:
    block = provider_block(name='"x"', kind='"openai-compatible"', models='["m"]')
    error = refused(tmp_path, block)
    assert error.field == "regions.eu.providers[2].base_url"


def test_missing_config_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no configuration"):
        load_settings(tmp_path / "nope.toml")


def test_api_key_is_read_from_the_named_env_var_and_hidden(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EU_TEST_KEY", "sk-very-secret")
    raw: dict[str, Any] = {
        "directory": {"database_url": "sqlite:///d.db"},
        "regions": {"eu": {
            "display_name": "EU", "listen": "127.0.0.1:1", "public_url": "http://127.0.0.1:1",
            "database_url": "sqlite:///eu.db", "blob_url": "file://b",
            "key_provider": {"kind": "local", "path": "k"},
            "providers": [{"name": "p", "kind": "openai-compatible", "models": ["m"],
                           "base_url": "https://x.example/v1", "api_key_env": "EU_TEST_KEY"}],
        }},
    }
    settings = parse_settings(raw, config_path=tmp_path / "d.toml", check_files=False)
    key = settings.regions["eu"].providers[0].api_key()
    assert key is not None and key.get_secret_value() == "sk-very-secret"
    assert "sk-very-secret" not in repr(settings) and "sk-very-secret" not in repr(key)


def test_a_credential_in_a_provider_url_is_refused_without_echoing_it(tmp_path: Path) -> None:
    error = refused(tmp_path, provider_block(
        name='"x"', kind='"openai-compatible"', models='["m"]',
        base_url='"https://user:hunter2secret@llm.example.com/v1"'))
    assert error.field == "regions.eu.providers[2].base_url"
    assert "hunter2secret" not in str(error)


# -- [server] tls_cert / tls_key ----------------------------------------------------------

TLS_FIELDS = '[server]\ntls_cert = "tls/server.pem"\ntls_key = "tls/server.key"\n'


def with_tls_files(tmp_path: Path, *names: str) -> None:
    (tmp_path / "tls").mkdir(exist_ok=True)
    for name in names:
        (tmp_path / "tls" / name).write_text("pem")


def test_tls_files_resolve_against_data_dir(tmp_path: Path) -> None:
    with_tls_files(tmp_path, "server.pem", "server.key")
    settings = load_settings(write_site(tmp_path, render_config(8400) + TLS_FIELDS))
    assert settings.server.tls_cert == tmp_path.resolve() / "tls" / "server.pem"
    assert settings.server.tls_key == tmp_path.resolve() / "tls" / "server.key"
    assert load_settings(write_site(tmp_path, render_config(8400))).server.tls_cert is None


@pytest.mark.parametrize(("body", "present", "field", "says"), [
    ('[server]\ntls_cert = "tls/server.pem"\n', ("server.pem",), "server.tls_key",
     "go together"),
    ('[server]\ntls_key = "tls/server.key"\n', ("server.key",), "server.tls_cert",
     "go together"),
    (TLS_FIELDS, ("server.key",), "server.tls_cert", "server.pem does not exist"),
    (TLS_FIELDS, ("server.pem",), "server.tls_key", "server.key does not exist"),
])
def test_tls_fields_come_together_and_their_files_must_exist(
        tmp_path: Path, body: str, present: tuple[str, ...], field: str, says: str) -> None:
    with_tls_files(tmp_path, *present)
    error = refused(tmp_path, render_config(8400) + body)
    assert error.field == field and says in error.message


def test_dev_tls_config_names_the_files_and_https_urls(tmp_path: Path) -> None:
    with_tls_files(tmp_path, "server.pem", "server.key")
    settings = load_settings(write_site(tmp_path, render_config(8400, dev_tls=True)))
    assert settings.server.tls_key == tmp_path.resolve() / "tls" / "server.key"
    assert {r.public_url for r in settings.regions.values()} == {
        "https://127.0.0.1:8400", "https://127.0.0.1:8401"}


# -- past one machine: keystores, KMS key providers, S3, Redis, observability -----------------

PG = "postgresql://postgres@127.0.0.1:5432"
KMS = ('key_provider = { kind = "aws-kms", key_id = "alias/eu-kek", region = "eu-central-1", '
       'endpoint_url = "http://127.0.0.1:5000" }')


def eu_edit(body: str, old: str, new: str) -> str:
    assert old in body
    return body.replace(old, new, 1)


def test_a_local_kek_keeps_its_keystore_beside_it_by_default(good_config: Path) -> None:
    eu = load_settings(good_config).regions["eu"]
    assert eu.keystore_path == good_config.parent.resolve() / "eu" / "kek.key.keystore.db"
    assert eu.kek_path == eu.key_dir / "kek.key"  # type: ignore[operator]


def test_a_kms_region_names_its_key_and_keystore(tmp_path: Path) -> None:
    body = eu_edit(render_config(8400), 'key_provider = { kind = "local", path = "eu/kek.key" }',
                   KMS + '\nkeystore_url = "sqlite:///eu/keys.db"\nkey_cache_s = 5\n'
                   'redis_url = "redis://127.0.0.1:6379/0"')
    eu = load_settings(write_site(tmp_path, body)).regions["eu"]
    assert eu.key_provider.kind == "aws-kms" and eu.kek_path is None
    assert eu.keystore_path == tmp_path.resolve() / "eu" / "keys.db"
    assert eu.key_dir == tmp_path.resolve() / "eu" and eu.key_cache_s == 5
    assert eu.redis_url == "redis://127.0.0.1:6379/0"


def test_a_vault_token_is_read_from_its_env_var_and_hidden(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EU_VAULT", "hvs.very-secret")
    body = eu_edit(render_config(8400), 'key_provider = { kind = "local", path = "eu/kek.key" }',
                   'key_provider = { kind = "vault-transit", url = "https://vault.eu.internal",'
                   ' key_name = "eu-kek", token_env = "EU_VAULT" }\n'
                   'keystore_url = "sqlite:///eu/keys.db"')
    settings = load_settings(write_site(tmp_path, body))
    provider = settings.regions["eu"].key_provider
    assert provider.kind == "vault-transit" and provider.mount == "transit"
    token = provider.token()
    assert token is not None and token.get_secret_value() == "hvs.very-secret"
    assert "very-secret" not in repr(settings)


@pytest.mark.parametrize(("old", "new", "field", "message"), [
    ('database_url = "sqlite:///eu/store.db"', f'database_url = "{PG}/eu"',
     "regions.eu.keystore_url", "every replica shares"),
    ('database_url = "sqlite:///eu/store.db"',
     f'database_url = "{PG}/eu"\nkeystore_url = "sqlite:///eu/keys.db"',
     "regions.eu.keystore_url", "would diverge"),
    ('database_url = "sqlite:///eu/store.db"',
     f'database_url = "{PG}/eu"\nkeystore_url = "{PG}/eu"',
     "regions.eu.keystore_url", "must not be the region's content database"),
    ('key_provider = { kind = "local", path = "eu/kek.key" }', KMS,
     "regions.eu.keystore_url", "KEK is in a KMS"),
    ('key_provider = { kind = "local", path = "eu/kek.key" }',
     KMS.replace("http://127.0.0.1:5000", "http://kms.example.com") +
     '\nkeystore_url = "sqlite:///eu/keys.db"',
     "regions.eu.key_provider.endpoint_url", "plain http"),
    ('key_provider = { kind = "local", path = "eu/kek.key" }',
     'key_provider = { kind = "gcp-kms", key_id = "k" }', "regions.eu.key_provider", ""),
    ('blob_url = "file://eu/blobs"', 'blob_url = "s3://b/p?sse=DES"', "regions.eu.blob_url",
     "sse is AES256"),
    ('blob_url = "file://eu/blobs"', 'blob_url = "s3://b/p?colour=red"', "regions.eu.blob_url",
     "unknown S3 option"),
    ('blob_url = "file://eu/blobs"', 'blob_url = "s3://b/p?endpoint_url=http://s3.example.com"',
     "regions.eu.blob_url", "plain http"),
    ('default_retention = "zero"', 'default_retention = "zero"\nredis_url = "http://x"',
     "regions.eu.redis_url", "redis://"),
])
def test_scale_out_settings_are_checked(tmp_path: Path, old: str, new: str, field: str,
                                        message: str) -> None:
    error = refused(tmp_path, eu_edit(render_config(8400), old, new))
    assert error.field == field and message in str(error)


def test_two_regions_never_share_a_keystore(tmp_path: Path) -> None:
    body = render_config(8400)
    for region in ("eu", "us"):
        body = eu_edit(body, f'database_url = "sqlite:///{region}/store.db"',
                       f'database_url = "sqlite:///{region}/store.db"\n'
                       'keystore_url = "sqlite:///keys.db"')
    error = refused(tmp_path, body)
    assert error.field == "regions.us.keystore_url" and "regions.eu" in str(error)


def test_s3_options_and_observability_parse(tmp_path: Path) -> None:
    url = ("s3://domicile-eu/blobs?endpoint_url=http://127.0.0.1:9000&region=eu-central-1"
           "&sse=aws:kms&sse_kms_key_id=alias/eu")
    body = eu_edit(render_config(8400), 'blob_url = "file://eu/blobs"', f'blob_url = "{url}"')
    body += '\n[observability]\nlog_format = "json"\nmetrics = false\n'
    settings = load_settings(write_site(tmp_path, body))
    assert settings.regions["eu"].blob_url == url and settings.regions["eu"].blob_path is None
    assert settings.observability.log_format == "json" and not settings.observability.metrics
    error = refused(tmp_path, render_config(8400) + '\n[observability]\nlog_format = "xml"\n')
    assert error.field == "observability.log_format"


def test_a_keystore_is_never_another_regions_content_database(tmp_path: Path) -> None:
    body = render_config(8400)
    body = eu_edit(body, 'database_url = "sqlite:///eu/store.db"',
                   'database_url = "sqlite:///eu/store.db"\nkeystore_url = "sqlite:///us/store.db"')
    error = refused(tmp_path, body)
    assert error.field == "regions.eu.keystore_url" and "content database of us" in str(error)


@pytest.mark.parametrize(("eu_blobs", "us_blobs"), [
    ("file://blobs", "file://blobs"),
    ("file://blobs", "file://blobs/us"),
    ("s3://bkt/p", "s3://bkt/p?region=eu-central-1"),
    ("s3://bkt/p", "s3://bkt/p/us"),
    ("s3://bkt", "s3://bkt/us"),
])
def test_two_regions_never_share_a_blob_store(tmp_path: Path, eu_blobs: str,
                                              us_blobs: str) -> None:
    body = render_config(8400)
    body = eu_edit(body, 'blob_url = "file://eu/blobs"', f'blob_url = "{eu_blobs}"')
    body = eu_edit(body, 'blob_url = "file://us/blobs"', f'blob_url = "{us_blobs}"')
    error = refused(tmp_path, body)
    assert error.field == "regions.us.blob_url" and "regions.eu" in str(error)


def test_regions_on_neighbouring_prefixes_of_one_bucket_are_apart(tmp_path: Path) -> None:
    body = render_config(8400)
    body = eu_edit(body, 'blob_url = "file://eu/blobs"', 'blob_url = "s3://bkt/eu"')
    body = eu_edit(body, 'blob_url = "file://us/blobs"', 'blob_url = "s3://bkt/eu2"')
    settings = load_settings(write_site(tmp_path, body))
    assert settings.regions["us"].blob_url == "s3://bkt/eu2"


def test_a_metrics_token_is_read_from_its_env_var_and_hidden(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCRAPE_TOKEN", "metrics-very-secret")
    body = render_config(8400) + '\n[observability]\nmetrics_token_env = "SCRAPE_TOKEN"\n'
    settings = load_settings(write_site(tmp_path, body))
    assert settings.observability.metrics_token_env == "SCRAPE_TOKEN"
    token = settings.observability.metrics_token()
    assert token is not None and token.get_secret_value() == "metrics-very-secret"
    assert "very-secret" not in repr(settings) and "very-secret" not in repr(token)
    monkeypatch.setenv("SCRAPE_TOKEN", "")
    assert settings.observability.metrics_token() is None  # empty: no token (fail closed)
    unset = load_settings(write_site(tmp_path, render_config(8400)))
    assert unset.observability.metrics_token_env is None
    assert unset.observability.metrics_token() is None


def test_a_metrics_token_env_must_name_an_env_var(tmp_path: Path) -> None:
    body = render_config(8400) + '\n[observability]\nmetrics_token_env = "tok en=secret"\n'
    error = refused(tmp_path, body)
    assert error.field == "observability.metrics_token_env"
    assert "secret" not in str(error)
