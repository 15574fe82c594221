"""The outside services the scale-out backends talk to, for tests: moto's server mode (S3 and
KMS, an emulator: tests that use it say so) started as a process of its own, and the machine's
Redis. Under CI=true a service that cannot be had fails the test; elsewhere it skips, loudly.

Fixtures (import them in a conftest): `moto` (one server per test session and worker),
`s3_bucket` (a fresh bucket URL per test), `kms_key` (a fresh KMS key per test), `redis_url`.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import pytest

EMULATOR_REGION = "eu-central-1"
REDIS_URL_ENV = "DOMICILE_TEST_REDIS_URL"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
START_REDIS = ('redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" '
               "--appendonly no")


def _missing(what: str, how: str) -> NoReturn:
    message = f"{what} not available: {how}"
    if os.environ.get("CI", "").lower() in ("true", "1"):
        pytest.fail(f"{message} (CI=true: a missing service fails the run)", pytrace=False)
    pytest.skip(message)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass(frozen=True)
class MotoServer:
    """A moto server on loopback: boto3 clients for it, any credentials."""

    endpoint_url: str
    region: str = EMULATOR_REGION

    def client(self, service: str) -> Any:
        import boto3

        return boto3.client(service, endpoint_url=self.endpoint_url, region_name=self.region,
                            aws_access_key_id="testing", aws_secret_access_key="testing")

    def bucket(self) -> str:
        """A new, empty bucket's name (a valid S3 name)."""
        name = f"domicile-{secrets.token_hex(6)}"
        self.client("s3").create_bucket(
            Bucket=name, CreateBucketConfiguration={"LocationConstraint": self.region})
        return name

    def kms_key(self) -> str:
        """A new symmetric KMS key's ARN."""
        made = self.client("kms").create_key(KeySpec="SYMMETRIC_DEFAULT",
                                             KeyUsage="ENCRYPT_DECRYPT")
        return str(made["KeyMetadata"]["Arn"])


def moto_environment() -> dict[str, str]:
    """Credentials for boto3 inside servers the tests start (moto accepts any)."""
    return {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": EMULATOR_REGION}


def start_moto(log_dir: Path) -> tuple[subprocess.Popen[bytes], MotoServer]:
    """A moto server process on a free loopback port, answering before this returns."""
    executable = shutil.which("moto_server", path=os.path.dirname(sys.executable))
    if executable is None:
        _missing("moto_server", "pip install 'moto[server]' (make install-test does)")
    port = free_port()
    log = open(log_dir / "moto.log", "wb")  # noqa: SIM115 - the process's lifetime
    process = subprocess.Popen([executable, "-H", "127.0.0.1", "-p", str(port)],
                               stdout=log, stderr=subprocess.STDOUT)
    log.close()
    server = MotoServer(f"http://127.0.0.1:{port}")
    deadline = time.monotonic() + 60  # a bound for a wedged start, not a timing assumption
    while True:
        if process.poll() is not None:
            pytest.fail(f"moto_server exited with {process.returncode}: "
                        f"{(log_dir / 'moto.log').read_text(errors='replace')[-2000:]}")
        with contextlib.suppress(OSError, urllib.error.URLError):
            with urllib.request.urlopen(server.endpoint_url + "/moto-api/", timeout=5):
                return process, server
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail("moto_server did not answer within 60 s")
        time.sleep(0.1)


@pytest.fixture(scope="session")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    process, server = start_moto(tmp_path_factory.mktemp("moto"))
    os.environ.update({k: v for k, v in moto_environment().items() if k not in os.environ})
    try:
        yield server
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def s3_bucket(moto: MotoServer) -> str:
    """`s3://<fresh bucket>/<prefix>?endpoint_url=…&region=…` on the moto server."""
    bucket = moto.bucket()
    return f"s3://{bucket}/blobs?endpoint_url={moto.endpoint_url}&region={moto.region}"


@pytest.fixture
def kms_key(moto: MotoServer) -> str:
    return moto.kms_key()


@pytest.fixture(scope="session")
def redis_url() -> str:
    """The machine's Redis (DOMICILE_TEST_REDIS_URL, else 127.0.0.1:6379/0), checked with a
    PING. Tests keep to keys of their own (random key ids and prefixes): never FLUSHDB."""
    import redis

    url = os.environ.get(REDIS_URL_ENV, DEFAULT_REDIS_URL)
    client = redis.Redis.from_url(url, socket_connect_timeout=5)
    try:
        client.ping()
    except redis.RedisError as exc:
        _missing(f"Redis at {url}", f"{type(exc).__name__}; start it with `{START_REDIS}` or "
                 f"set {REDIS_URL_ENV}")
    finally:
        client.close()
    return url
