"""What can be checked here of what cannot run here: the Dockerfile (hadolint) and the Helm
chart (Helm's own lint and renderer, the rendered manifests against Kubernetes' schemas, the
rendered domicile.toml against Domicile's own config parser). No image is built and no
cluster is contacted: docs/deploy.md says what that leaves unverified."""

from __future__ import annotations

import json
import re
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from domicile.config import AwsKmsSettings, VaultTransitSettings, parse_settings
from tests.deploy.conftest import CHART, DOCKERFILE, ROOT

# The oldest Kubernetes the chart declares (Chart.yaml kubeVersion) and a current one.
KUBERNETES_VERSIONS = ("1.27.0", "1.33.0")


def render(helm: Any, values: dict[str, Any] | None = None) -> dict[str, list[dict[str, Any]]]:
    """The chart rendered by Helm's Go code: {template file: [manifests]}."""
    with helm.Chart.load(str(CHART)) as chart:
        rendered = chart.render(values or {}, name="domicile", namespace="domicile-eu")
    return {Path(name).name: [doc for doc in yaml.safe_load_all(text) if doc]
            for name, text in rendered.items() if name.endswith(".yaml")}


def manifests(helm: Any, values: dict[str, Any] | None = None) -> Iterator[dict[str, Any]]:
    for docs in render(helm, values).values():
        yield from docs


def one(helm: Any, kind: str, values: dict[str, Any] | None = None) -> dict[str, Any]:
    found = [doc for doc in manifests(helm, values) if doc["kind"] == kind]
    assert len(found) == 1, f"{len(found)} {kind}s rendered"
    return found[0]


def rendered_config(helm: Any, values: dict[str, Any] | None = None) -> str:
    for doc in manifests(helm, values):
        if doc["kind"] == "ConfigMap":
            text: str = doc["data"]["domicile.toml"]
            return text
        if doc["kind"] == "Secret" and doc["metadata"]["name"].endswith("-config"):
            text = doc["stringData"]["domicile.toml"]
            return text
    raise AssertionError("no domicile.toml rendered")


def default_values() -> dict[str, Any]:
    values: dict[str, Any] = yaml.safe_load((CHART / "values.yaml").read_text())
    return values


# -- Dockerfile -----------------------------------------------------------------------------


def hadolint_findings(hadolint: str, dockerfile: Path) -> list[dict[str, Any]]:
    done = subprocess.run([hadolint, "--no-color", "--format", "json", str(dockerfile)],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    findings: list[dict[str, Any]] = json.loads(done.stdout or "[]")
    return findings


def test_hadolint_finds_nothing_in_the_dockerfile(hadolint: str) -> None:
    assert hadolint_findings(hadolint, DOCKERFILE) == []


def test_hadolint_reports_what_it_should(hadolint: str, tmp_path: Path) -> None:
    """The check above can fail: a `latest` base, root and an unpinned pip install are found."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install requests\nUSER root\nCMD [\"python\"]\n")
    codes = {finding["code"] for finding in hadolint_findings(hadolint, bad)}
    assert {"DL3007", "DL3013", "DL3002"} <= codes


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    lines = [line.strip() for line in text.splitlines()]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1])
            for line in lines if line and not line.startswith("#")]


def test_the_image_runs_as_a_fixed_non_root_user_with_a_health_check() -> None:
    instructions = dockerfile_instructions()
    runtime = instructions[max(i for i, (op, _) in enumerate(instructions) if op == "FROM"):]
    users = [args for op, args in runtime if op == "USER"]
    assert users == ["10001:10001"]
    healthchecks = [args for op, args in runtime if op == "HEALTHCHECK"]
    assert len(healthchecks) == 1 and "domicile-healthcheck" in healthchecks[0]
    assert ("EXPOSE", "8400") in runtime
    assert ("ENTRYPOINT", '["domicile"]') in runtime
    assert ("CMD", '["serve", "--config", "/etc/domicile/domicile.toml"]') in runtime
    env = " ".join(args for op, args in runtime if op == "ENV")
    assert "HF_HUB_OFFLINE=1" in env


def test_the_image_is_built_from_pinned_parts() -> None:
    instructions = dockerfile_instructions()
    args = dict(arg.split("=", 1) for op, arg in instructions if op == "ARG" and "=" in arg)
    assert args["PYTHON_IMAGE"] == "python:3.11-slim"
    assert not any("latest" in arg for op, arg in instructions if op == "FROM")
    # The torch of the Makefile, from the CPU wheel index (not PyPI's CUDA build).
    makefile_torch = re.search(r"^TORCH := torch==(\S+)$", (ROOT / "Makefile").read_text(), re.M)
    assert makefile_torch is not None and args["TORCH_VERSION"] == makefile_torch.group(1)
    runs = " ".join(arg for op, arg in instructions if op == "RUN")
    assert "--index-url https://download.pytorch.org/whl/cpu" in runs
    assert '".[embeddings,otel]"' in runs


def test_dockerignore_keeps_a_sites_keys_and_data_out() -> None:
    patterns = (ROOT / ".dockerignore").read_text().split()
    assert patterns[patterns.index("*") + 1:].count("!src/") == 1
    assert {"**/*.key", "**/*.db", "**/*.pem"} <= set(patterns)


# -- Helm chart -----------------------------------------------------------------------------


def test_helm_lint_is_clean(helm: Any) -> None:
    report = helm.lint(str(CHART), strict=True)
    problems = [message for message in report["messages"] if message["severity"] >= 2]
    assert report["errors"] == [] and problems == []


# A region Prometheus scrapes through the operator: the bearer token in a Secret.
SCRAPED = {"serviceMonitor": {"enabled": True},
           "secrets": {"metricsToken": {"name": "domicile-eu-metrics", "key": "token"}}}


def test_the_rendered_manifests_are_valid_kubernetes(helm: Any, kubernetes_validate: Any) -> None:
    rendered = list(manifests(helm, SCRAPED))
    kinds = sorted(doc["kind"] for doc in rendered)
    assert kinds == ["ConfigMap", "Deployment", "NetworkPolicy", "PodDisruptionBudget",
                     "Service", "ServiceAccount", "ServiceMonitor"]
    for version in KUBERNETES_VERSIONS:
        for doc in rendered:
            if doc["apiVersion"].startswith("monitoring.coreos.com/"):
                continue  # a CRD of the Prometheus operator: no schema ships with Kubernetes
            kubernetes_validate.validate(doc, version, strict=True)


def test_the_schema_check_can_fail(kubernetes_validate: Any, helm: Any) -> None:
    deployment = one(helm, "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessprobe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[-1], strict=True)


def test_values_validate_against_the_charts_schema(helm: Any) -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    jsonschema.validate(default_values(), schema)
    with helm.Chart.load(str(CHART)) as chart:
        chart.validate_schema({})
        for wrong in ({"image": {"tag": "latest"}}, {"replicas": 3},
                      {"region": {"name": "global"}},
                      {"region": {"keyProvider": {"kind": "gcp-kms"}}},
                      {"region": {"keyProvider": {"kind": "vault-transit"}}}):
            with pytest.raises(helm.HelmError):
                chart.validate_schema(wrong)


def test_the_rendered_config_is_one_domicile_accepts(helm: Any, tmp_path: Path) -> None:
    text = rendered_config(helm)
    settings = parse_settings(tomllib.loads(text), config_path=tmp_path / "domicile.toml",
                              check_files=False)
    eu = settings.region("eu")
    assert eu.listen == "0.0.0.0:8400" and eu.public_url == "https://eu.domicile.example.com"
    assert isinstance(eu.key_provider, AwsKmsSettings)
    assert eu.keystore_url is not None and "domicile_eu_keys" in eu.keystore_url
    assert eu.redis_url == "rediss://redis.eu.example.internal:6379/0"
    assert eu.blob_url.startswith("s3://acme-domicile-eu/")
    assert [p.name for p in eu.providers] == ["eu-embeddings", "eu-vllm"]
    assert eu.providers[1].api_key_env == "DOMICILE_PROVIDER_EU_VLLM_API_KEY"
    # The peer is there for its URL (G3) and nothing of it points anywhere real.
    us = settings.region("us")
    assert us.public_url == "https://us.domicile.example.com"
    assert ".invalid" in us.database_url and us.providers == ()
    assert settings.server.tls_key is not None
    assert str(settings.server.tls_key) == "/run/domicile/keys/tls/tls.key"
    assert settings.directory.secret_file == Path("/run/domicile/keys/directory/directory.key")
    assert settings.observability.log_format == "json"


def test_a_vault_region_without_tls_in_a_secret_config(helm: Any, tmp_path: Path) -> None:
    values = {
        "configAsSecret": True,
        "tls": {"enabled": False},
        "region": {"keyProvider": {"kind": "vault-transit", "vault-transit": {
                       "url": "https://vault.eu.internal:8200", "key_name": "domicile-eu",
                       "token_env": "EU_VAULT_TOKEN"}},
                   "redisUrl": ""},
        "secrets": {"vaultToken": {"name": "domicile-eu-vault", "key": "token"}},
        "config": {"workspace": {"messages_per_minute": 60}},
    }
    settings = parse_settings(tomllib.loads(rendered_config(helm, values)),
                              config_path=tmp_path / "domicile.toml", check_files=False)
    eu = settings.region("eu")
    assert isinstance(eu.key_provider, VaultTransitSettings)
    assert eu.redis_url is None and settings.server.tls_cert is None
    assert settings.workspace.messages_per_minute == 60
    container = one(helm, "Deployment", values)["spec"]["template"]["spec"]["containers"][0]
    assert "--insecure-http" in container["args"]
    assert {"name": "EU_VAULT_TOKEN", "valueFrom": {"secretKeyRef": {
        "name": "domicile-eu-vault", "key": "token"}}} in container["env"]
    assert container["readinessProbe"]["httpGet"]["scheme"] == "HTTP"
    assert not any(doc["kind"] == "ConfigMap" for doc in manifests(helm, values))


def test_metrics_are_scraped_with_the_bearer_token_from_one_secret(
        helm: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The pods read the token from the env var [observability] names, the ServiceMonitor
    sends it from the same Secret; without one, /metrics answers loopback only."""
    settings = parse_settings(tomllib.loads(rendered_config(helm, SCRAPED)),
                              config_path=tmp_path / "domicile.toml", check_files=False)
    assert settings.observability.metrics_token_env == "DOMICILE_METRICS_TOKEN"
    monkeypatch.setenv("DOMICILE_METRICS_TOKEN", "scrape-me")
    token = settings.observability.metrics_token()
    assert token is not None and token.get_secret_value() == "scrape-me"
    container = one(helm, "Deployment", SCRAPED)["spec"]["template"]["spec"]["containers"][0]
    assert {"name": "DOMICILE_METRICS_TOKEN", "valueFrom": {"secretKeyRef": {
        "name": "domicile-eu-metrics", "key": "token"}}} in container["env"]
    endpoint = one(helm, "ServiceMonitor", SCRAPED)["spec"]["endpoints"][0]
    assert endpoint["path"] == "/metrics"
    assert endpoint["authorization"] == {
        "type": "Bearer", "credentials": {"name": "domicile-eu-metrics", "key": "token"}}
    # A name of the operator's choosing for the env var is used on both sides.
    named = {**SCRAPED, "config": {"observability": {"metrics_token_env": "EU_SCRAPE"}}}
    assert 'metrics_token_env = "EU_SCRAPE"' in rendered_config(helm, named)
    container = one(helm, "Deployment", named)["spec"]["template"]["spec"]["containers"][0]
    assert "EU_SCRAPE" in [env["name"] for env in container["env"]]
    # No token Secret: no token env var, loopback-only metrics, and no ServiceMonitor.
    plain = parse_settings(tomllib.loads(rendered_config(helm)),
                           config_path=tmp_path / "domicile.toml", check_files=False)
    assert plain.observability.metrics_token_env is None
    container = one(helm, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert "DOMICILE_METRICS_TOKEN" not in [env["name"] for env in container["env"]]
    with pytest.raises(helm.HelmError, match=r"secrets\.metricsToken\.name"):
        render(helm, {"serviceMonitor": {"enabled": True}})


def test_the_pods_run_locked_down(helm: Any) -> None:
    pod = one(helm, "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001
    assert pod["automountServiceAccountToken"] is False
    for container in pod["containers"] + pod["initContainers"]:
        security = container["securityContext"]
        assert security["readOnlyRootFilesystem"] is True
        assert security["allowPrivilegeEscalation"] is False
        assert security["capabilities"]["drop"] == ["ALL"]
    container = pod["containers"][0]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "http",
                                               "scheme": "HTTPS"}
    assert container["args"][:5] == ["serve", "--config", "/etc/domicile/domicile.toml",
                                     "--region", "eu"]
    assert container["resources"]["limits"]["memory"]
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    assert volumes["keys"]["emptyDir"]["medium"] == "Memory"
    assert volumes["tmp"]["emptyDir"]["medium"] == "Memory"
    anti = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert anti[0]["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    budget = one(helm, "PodDisruptionBudget")["spec"]
    assert budget["maxUnavailable"] == 1
    assert budget["selector"]["matchLabels"] == pod_labels(helm)


def pod_labels(helm: Any) -> dict[str, str]:
    labels: dict[str, str] = one(helm, "Deployment")["spec"]["selector"]["matchLabels"]
    return labels


def test_the_network_policy_allows_only_the_regions_destinations(helm: Any) -> None:
    policy = one(helm, "NetworkPolicy")["spec"]
    assert policy["podSelector"]["matchLabels"] == pod_labels(helm)
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    assert policy["ingress"] == [{"ports": [{"port": 8400, "protocol": "TCP"}]}]
    allowed = {(peer["ipBlock"]["cidr"], port["port"])
               for rule in policy["egress"] for peer in rule["to"] if "ipBlock" in peer
               for port in rule["ports"]}
    assert allowed == {("10.10.0.10/32", 5432), ("10.20.1.10/32", 5432),
                       ("10.20.1.20/32", 5432), ("10.20.2.0/24", 443), ("10.20.3.0/24", 443),
                       ("10.20.4.10/32", 6379), ("10.20.0.0/24", 443)}
    dns = [rule for rule in policy["egress"] if "ipBlock" not in rule["to"][0]]
    assert len(dns) == 1 and {p["protocol"] for p in dns[0]["ports"]} == {"TCP", "UDP"}


def test_a_provider_without_an_address_is_refused(helm: Any) -> None:
    values = default_values()
    provider = values["region"]["providers"][1]
    del provider["egress"]
    with pytest.raises(helm.HelmError, match=r"region\.providers eu-vllm: give egress\.cidrs"):
        render(helm, {"region": {"providers": values["region"]["providers"]}})


def test_a_needed_destination_without_an_address_is_refused(helm: Any) -> None:
    with pytest.raises(helm.HelmError, match=r"networkPolicy\.egress\.keystore"):
        render(helm, {"networkPolicy": {"egress": {"keystore": {"cidrs": []}}}})
    # Not needed, not asked for: no Redis, no Redis rule.
    rendered = one(helm, "NetworkPolicy", {"region": {"redisUrl": ""},
                                           "networkPolicy": {"egress": {"redis": None}}})
    assert all(port["port"] != 6379
               for rule in rendered["spec"]["egress"] for port in rule["ports"])


def test_the_init_container_copies_the_keys_private(helm: Any, tmp_path: Path) -> None:
    """The init container's own script, run here on a folder laid out as the kubelet lays out a
    Secret volume (files behind `..data` symlinks, group-readable): each key comes out 0600."""
    init = one(helm, "Deployment")["spec"]["template"]["spec"]["initContainers"][0]
    shell, flags, script = init["command"]
    secrets, keys = tmp_path / "secrets", tmp_path / "keys"
    payload = secrets / "..2026_12_02_13_00_00.000000001"
    for name in ("directory/directory.key", "region/audit-signing.key", "tls/tls.key", "pgpass"):
        (payload / name).parent.mkdir(parents=True, exist_ok=True)
        (payload / name).write_bytes(name.encode())
        (payload / name).chmod(0o440)
    (secrets / "..data").symlink_to(payload.name)
    for top in ("directory", "region", "tls", "pgpass"):
        (secrets / top).symlink_to(f"..data/{top}")
    keys.mkdir()
    script = script.replace("/run/domicile/secrets", str(secrets))
    script = script.replace("/run/domicile/keys", str(keys))
    subprocess.run([shell, flags, script], check=True, timeout=30)
    copied = sorted(p.relative_to(keys).as_posix() for p in keys.rglob("*") if p.is_file())
    assert copied == ["directory/directory.key", "pgpass", "region/audit-signing.key",
                      "tls/tls.key"]
    for path in keys.rglob("*"):
        assert not path.is_symlink()
        if path.is_file():
            assert path.stat().st_mode & 0o777 == 0o600
            assert path.read_bytes() == path.relative_to(keys).as_posix().encode()


def test_templates_balance_their_braces() -> None:
    for template in (CHART / "templates").iterdir():
        text = template.read_text()
        assert text.count("{{") == text.count("}}"), template.name

