"""Random 96-bit AES-GCM nonces, drawn from a buffered `os.urandom` pool.

Why a pool: one `os.urandom(12)` syscall costs about as much as sealing a 1 KiB record with
AES-GCM, so `seal` reads 48 KiB at a time and slices it. The bytes are the same CSPRNG output
`os.urandom(12)` would return; nonces are public, so holding them in memory briefly is fine.

Why a nonce can never be handed out twice:
- The pool is one immutable pair `(buffer, counter)` stored in a single attribute. A taker reads
  the pair once, then calls `next(counter)`; both are single operations under the GIL, so every
  `(buffer, index)` is given to exactly one caller, and a refill swaps in a *new* pair (a taker
  still holding the old pair can only get indexes past its end, which it discards).
- `fork()` would copy the pool into the child, and parent and child would then hand out the same
  nonces: `os.register_at_fork(after_in_child=...)` gives the child a fresh pool before any of
  its code runs. (`subprocess` and `multiprocessing` "spawn" start a new interpreter: new pool.)
- On a free-threaded build (no GIL), `next()` is not documented as atomic, so takes go through a
  lock there.

Random nonces under one key are safe for up to 2**32 messages (NIST SP 800-38D); a tenant's data
key seals one nonce per record (blobs derive their own key per blob, see `_stream`).
"""

from __future__ import annotations

import itertools
import os
import sys
import threading
from collections.abc import Callable

__all__ = ["take_nonce"]

NONCE_SIZE = 12
_POOL_NONCES = 4096
_POOL_BYTES = NONCE_SIZE * _POOL_NONCES


class _Pool:
    __slots__ = ("lock", "state")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.state: tuple[bytes, itertools.count[int]] = _fresh()

    def refill(self, seen: tuple[bytes, itertools.count[int]]) -> None:
        with self.lock:
            if self.state is seen:  # another thread may have refilled already
                self.state = _fresh()

    def reset_after_fork(self) -> None:
        self.lock = threading.Lock()
        self.state = _fresh()


def _fresh() -> tuple[bytes, itertools.count[int]]:
    return os.urandom(_POOL_BYTES), itertools.count(0, NONCE_SIZE)


_pool = _Pool()
if hasattr(os, "register_at_fork"):  # no fork() (Windows): nothing to guard against
    os.register_at_fork(after_in_child=_pool.reset_after_fork)


def _take_gil() -> bytes:
    state = _pool.state
    i = next(state[1])
    if i < _POOL_BYTES:
        return state[0][i : i + NONCE_SIZE]
    _pool.refill(state)
    return _take_gil()


def _take_locked() -> bytes:
    with _pool.lock:
        state = _pool.state
        i = next(state[1])
        if i >= _POOL_BYTES:
            _pool.state = state = _fresh()
            i = next(state[1])
    return state[0][i : i + NONCE_SIZE]


_gil_enabled: Callable[[], bool] = getattr(sys, "_is_gil_enabled", lambda: True)

# take_nonce() -> 12 fresh random bytes, never the same slice twice in this process.
take_nonce: Callable[[], bytes] = _take_gil if _gil_enabled() else _take_locked
