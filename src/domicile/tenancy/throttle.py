"""Sign-in throttling: too many failed sign-ins for one account, or from one client address,
within `login_window_s`, and further attempts are refused (429, `retry-after`) before any
password is checked, so guessing costs the guesser time and the server no argon2 work.

In memory, per server process, thread-safe (sign-in runs in worker threads), bounded: past
`max_keys` tracked keys the least recently failed are forgotten (an attacker cycling addresses
still meets the per-account limit).
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


class _Failures:
    """The failure times of one kind of key, newest keys last."""

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

    def clear(self, key: str) -> None:
        self.times.pop(key, None)


class LoginThrottle:
    """Failed sign-ins per account key and per client address, in a sliding window."""

    def __init__(self, settings: WorkspaceSettings, clock: Callable[[], float] = time.monotonic,
                 *, max_keys: int = 100_000) -> None:
        self._clock = clock
        window = settings.login_window_s
        self._accounts = _Failures(settings.login_failures_per_account, window, max_keys)
        self._addresses = _Failures(settings.login_failures_per_address, window, max_keys)
        self._lock = threading.Lock()

    def check(self, account_key: str, address: str) -> None:
        """Raise `LoginThrottled` when the account or the address has failed too often."""
        with self._lock:
            now = self._clock()
            waits = [wait for wait in (self._accounts.retry_after(account_key, now),
                                       self._addresses.retry_after(address, now))
                     if wait is not None]
        if waits:
            seconds = max(1, math.ceil(max(waits)))
            raise LoginThrottled(
                f"Too many failed sign-in attempts. Try again in {seconds} seconds.",
                headers=[(b"retry-after", str(seconds).encode("ascii"))])

    def failed(self, account_key: str, address: str) -> None:
        with self._lock:
            now = self._clock()
            self._accounts.add(account_key, now)
            self._addresses.add(address, now)

    def succeeded(self, account_key: str) -> None:
        """A correct password clears the account's failures (not the address's: one right
        password must not reset a guesser's count against every other account)."""
        with self._lock:
            self._accounts.clear(account_key)
