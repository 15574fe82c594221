"""The storage suite runs on the embedded default and on the scale-out stack: PostgreSQL for
content and for the shared keystore, blobs in S3, the KEK in KMS (S3 and KMS emulated by
moto's server mode) and Redis (tests/conftest.py `move_to_scale`). The scale-out stack is a
PostgreSQL site too, so PostgreSQL is covered without a third run."""

from __future__ import annotations

import pytest

SUITE_BACKENDS = ("sqlite", "scale")


@pytest.fixture(params=SUITE_BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)
