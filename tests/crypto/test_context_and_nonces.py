"""The building blocks: the context encoding is unambiguous, nonces never repeat."""

from __future__ import annotations

import dataclasses
import os
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from domicile.crypto import Context, _nonces
from domicile.crypto._nonces import take_nonce
from tests.crypto.support import context

fields = st.tuples(*[st.text(min_size=1, max_size=6, alphabet="ab:|\x00é") for _ in range(4)])


@settings(max_examples=300, deadline=None)
@given(a=fields, b=fields)
def test_different_contexts_never_share_associated_data(
    a: tuple[str, str, str, str], b: tuple[str, str, str, str]
) -> None:
    if a != b:
        assert Context(*a).associated_data != Context(*b).associated_data


def test_fields_cannot_bleed_into_each_other() -> None:
    assert (context(tenant="ab", kind="c").associated_data
            != context(tenant="a", kind="bc").associated_data)


@pytest.mark.parametrize(
    "bad",
    [{"tenant": ""}, {"kind": ""}, {"record_id": ""}, {"region": ""},
     {"tenant": b"ws_a"}, {"record_id": None}, {"kind": "x" * 70_000}, {"tenant": "\udc80"}],
)
def test_malformed_context_is_refused(bad: dict[str, object]) -> None:
    fields = {"region": "eu", "tenant": "ws_a", "kind": "message", "record_id": "m1", **bad}
    with pytest.raises(ValueError):
        Context(**fields)  # type: ignore[arg-type]


def test_context_is_frozen_and_equal_by_its_four_fields() -> None:
    ctx = context()
    with pytest.raises(dataclasses.FrozenInstanceError):
        ctx.tenant = "ws_b"  # type: ignore[misc]
    assert ctx == context() and hash(ctx) == hash(context())
    assert dataclasses.replace(ctx, tenant="ws_b").associated_data == context(
        tenant="ws_b").associated_data


def test_nonces_are_unique_across_pool_refills_and_threads() -> None:
    seen: list[bytes] = []

    def take(n: int) -> None:
        seen.extend([take_nonce() for _ in range(n)])

    threads = [threading.Thread(target=take, args=(5000,)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(seen) == 20_000 and len(set(seen)) == 20_000  # > 4 pools of 4096
    assert all(len(n) == 12 for n in seen)


def test_the_locked_pool_for_free_threaded_builds_never_repeats_either() -> None:
    nonces = [_nonces._take_locked() for _ in range(10_000)]
    assert len(set(nonces)) == 10_000 and {len(n) for n in nonces} == {12}


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_a_forked_child_does_not_repeat_its_parents_nonces() -> None:
    take_nonce()  # the pool is warm and shared with the child at fork time
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        try:
            os.write(write_end, b"".join(take_nonce() for _ in range(100)))
        finally:
            os._exit(0)
    os.close(write_end)
    child = b""
    while chunk := os.read(read_end, 4096):
        child += chunk
    os.close(read_end)
    os.waitpid(pid, 0)
    parent = [take_nonce() for _ in range(100)]
    child_nonces = {child[i : i + 12] for i in range(0, len(child), 12)}
    assert len(child_nonces) == 100
    assert not child_nonces & set(parent)
