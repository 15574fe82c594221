"""The Responses API against hostile input, odd upstreams and races: a deleted background
response stays deleted (one process, and two replicas over one store), malformed input and
parameters are 400s naming the param (never 500s, never echoing client text), an upstream's
malformed answer is a 502."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from domicile.gateway import GatewayApp
from domicile.site import Site
from domicile.storage.interfaces import TenantRef
from tests.gateway.conftest import EU_REGIONAL_KEY, Stack
from tests.gateway.support import (
    DictAuthenticator,
    MemoryUsageSink,
    ServedApp,
    grant,
    make_settings,
    provider,
)
from tests.gateway.test_responses_stream import until

AUTH = {"Authorization": f"Bearer {EU_REGIONAL_KEY}"}

# -- a deleted background response stays deleted ---------------------------------------------


class _GatedWrites:
    """Holds the store's write of a finished run (`completed` in its body) until `gate` is
    set; `writing` says one is waiting there."""

    def __init__(self, stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
        self.gate = threading.Event()
        self.writing = threading.Event()
        for name in ("put_record", "replace_record"):
            monkeypatch.setattr(stack.store, name, self._held(getattr(stack.store, name)))

    def _held(self, write: Callable[..., Any]) -> Callable[..., Any]:
        def held(tenant: TenantRef, kind: str, record_id: str, plaintext: bytes) -> Any:
            if kind == "response" and b'"status":"completed","background"' in plaintext:
                self.writing.set()
                assert self.gate.wait(20), "the test never let the write through"
            return write(tenant, kind, record_id, plaintext)
        return held


def _delete_in_background(url: str, response_id: str) -> tuple[threading.Thread,
                                                                 list[httpx.Response]]:
    answers: list[httpx.Response] = []

    def delete() -> None:
        answers.append(httpx.delete(f"{url}/v1/responses/{response_id}", headers=AUTH,
                                    timeout=20))

    thread = threading.Thread(target=delete)
    thread.start()
    return thread, answers


def _gone(stack: Stack, response_id: str) -> None:
    client = stack.client(EU_REGIONAL_KEY)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(response_id)
    with pytest.raises(openai.NotFoundError):
        client.responses.input_items.list(response_id)
    assert ("proj_key_eu_regional", "response", response_id) not in stack.store.records


def test_a_response_deleted_while_its_run_writes_stays_deleted(
        stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    writes = _GatedWrites(stack, monkeypatch)
    client = stack.client(EU_REGIONAL_KEY)
    queued = client.responses.create(model="dev-echo", input="secret", background=True)
    until(writes.writing.is_set, "the run to write its answer")
    endpoint = stack.eu_app._responses
    thread, answers = _delete_in_background(stack.eu.url, queued.id)
    # The DELETE either waits behind the run's write (the fix) or is done already.
    until(lambda: answers or (getattr(endpoint, "_writes", None) is not None
          and endpoint._writes.users(queued.id) >= 2), "the DELETE to reach the endpoint")
    writes.gate.set()
    thread.join(20)
    assert answers[0].status_code == 200 and answers[0].json()["deleted"] is True
    until(lambda: not endpoint._tasks, "the run to end")
    _gone(stack, queued.id)


@pytest.fixture
def replica(stack: Stack, tmp_path: Path) -> Iterator[ServedApp]:
    """Another process of region eu over the same content store (its own locks and runs)."""
    settings = make_settings(tmp_path, eu=[provider("eu-dev", "dev-echo", ["dev-echo"])],
                             us=[])
    app = GatewayApp(settings, "eu", usage_sink=MemoryUsageSink(), content_store=stack.store,
                     authenticator=DictAuthenticator({
                         EU_REGIONAL_KEY: grant("key_eu_regional", retention="regional")}))
    served = ServedApp(stack.loop, app)
    yield served
    served.stop()


def test_a_delete_on_another_replica_is_not_undone_by_the_run(
        stack: Stack, replica: ServedApp, monkeypatch: pytest.MonkeyPatch) -> None:
    writes = _GatedWrites(stack, monkeypatch)
    client = stack.client(EU_REGIONAL_KEY)
    queued = client.responses.create(model="dev-echo", input="secret", background=True)
    until(writes.writing.is_set, "the run to write its answer")
    thread, answers = _delete_in_background(replica.url, queued.id)
    thread.join(20)  # the other replica has its own locks: it deletes at once
    assert answers[0].status_code == 200
    writes.gate.set()
    until(lambda: not stack.eu_app._responses._tasks, "the run to end")
    _gone(stack, queued.id)


def test_replace_record_writes_only_what_is_there_on_a_real_store(site: Site) -> None:
    store = site.store("eu")
    org = site.directory.create_org("Acme")
    project = site.directory.create_project(org.id, "app", "eu", retention="regional")
    tenant = TenantRef(project.id, "eu", org.id)
    assert not store.replace_record(tenant, "response", "resp_gone", b"{}")
    assert store.get_record(tenant, "response", "resp_gone") is None
    store.put_record(tenant, "response", "resp_here", b"one")
    assert store.replace_record(tenant, "response", "resp_here", b"two")
    assert store.get_record(tenant, "response", "resp_here") == b"two"
    assert store.delete_record(tenant, "response", "resp_here")
    assert not store.replace_record(tenant, "response", "resp_here", b"three")
    assert store.get_record(tenant, "response", "resp_here") is None
