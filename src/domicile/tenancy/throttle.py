"""Sign-in throttling: too many sign-in attempts for one account, or from one client address,
within `login_window_s`, and further attempts are refused (429, `retry-after`) before any
password is checked, so guessing costs the guesser time and the server no argon2 work.

Every attempt is counted when it is let through (`check` reserves it, under the lock), and a
successful sign-in takes its attempt back (`succeeded`). Counting first and checking the
password after is what makes the limit hold for parallel requests: with a separate "count the
failure" step after the slow password check, every request of a burst passed `check` before
any failure was counted.

In memory, per server process, thread-safe (sign-in runs in worker threads), bounded: past
`max_keys` tracked keys the least recently counted are forgotten (an attacker cycling
addresses still meets the per-account limit).
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable

from domicile.config import WorkspaceSettings
from domicile.errors import LoginThrottled

__all__ = ["LoginThrottle"]


class _Attempts:
    """The counted attempt times of one kind of key, least recently counted keys first."""

    def __init__(self, limit: int, window: float, max_keys: int) -> None:
        self.limit = limit
        self.window = window
        self.max_keys = max_keys
        self.times: OrderedDict[str, deque[float]] = OrderedDict()

    def retry_after(self, key: str, now: float) -> float | None:
        """Seconds until `key` may try again; None when it may now."""
        times = self.times.get(key)
        if times is None:
            return None
        while times and times[0] <= now - self.window:
            times.popleft()
        if not times:
            del self.times[key]
            return None
        if len(times) < self.limit:
            return None
        # The attempt that brings it back under the limit: when the oldest counted one ages out.
        return times[-self.limit] + self.window - now

    def add(self, key: str, now: float) -> None:
        times = self.times.pop(key, None)
        if times is None:
            times = deque(maxlen=self.limit)
            while len(self.times) >= self.max_keys:
                self.times.popitem(last=False)
        times.append(now)
        self.times[key] = times

    def take_back(self, key: str) -> None:
        """Uncount one attempt of `key` (the newest: the count is what the limit reads)."""
        times = self.times.get(key)
        if times:
            times.pop()
            if not times:
                del self.times[key]

    def clear(self, key: str) -> None:
        self.times.pop(key, None)


class LoginThrottle:
    """Sign-in attempts per account key and per client address, in a sliding window; an
    attempt counts from `check` on, until a successful sign-in takes it back."""

    def __init__(self, settings: WorkspaceSettings, clock: Callable[[], float] = time.monotonic,
                 *, max_keys: int = 100_000) -> None:
        self._clock = clock
        window = settings.login_window_s
        self._accounts = _Attempts(settings.login_failures_per_account, window, max_keys)
        self._addresses = _Attempts(settings.login_failures_per_address, window, max_keys)
        self._lock = threading.Lock()

    def check(self, account_key: str, address: str) -> None:
        """Reserve an attempt for the account and the address, or raise `LoginThrottled` when
        either already has too many in the window. Deciding and counting happen under one
        lock, so parallel attempts cannot all pass before any of them is counted."""
        with self._lock:
            now = self._clock()
            waits = [wait for wait in (self._accounts.retry_after(account_key, now),
                                       self._addresses.retry_after(address, now))
                     if wait is not None]
            if not waits:
                self._accounts.add(account_key, now)
                self._addresses.add(address, now)
                return
        seconds = max(1, math.ceil(max(waits)))
        raise LoginThrottled(
            f"Too many failed sign-in attempts. Try again in {seconds} seconds.",
            headers=[(b"retry-after", str(seconds).encode("ascii"))])

    def succeeded(self, account_key: str, address: str) -> None:
        """A correct password: the account's attempts are cleared, and the address gets back
        the attempt `check` reserved (only that one: one right password must not reset a
        guesser's count against every other account)."""
        with self._lock:
            self._accounts.clear(account_key)
            self._addresses.take_back(address)
