"""The sign-in throttle: per account and per address, in a sliding window, bounded."""

from __future__ import annotations

import json

import pytest

from domicile.config import WorkspaceSettings
from domicile.errors import LoginThrottled
from domicile.tenancy.throttle import LoginThrottle
from tests.tenancy.conftest import FakeClock

# workspace_settings (conftest): 3 failures per account, 5 per address, in 60 s.


def fail(throttle: LoginThrottle, account: str, address: str, times: int) -> None:
    """`times` failed sign-ins: an attempt is counted by `check` itself; a failure adds
    nothing more."""
    for _ in range(times):
        throttle.check(account, address)


def retry_after(error: pytest.ExceptionInfo[LoginThrottled]) -> int:
    return int(dict(error.value.headers)[b"retry-after"])


def test_an_account_is_refused_after_its_failures_with_retry_after(
        throttle: LoginThrottle, clock: FakeClock) -> None:
    fail(throttle, "eu:a@example.com", "10.0.0.1", 2)
    clock.advance(10)
    fail(throttle, "eu:a@example.com", "10.0.0.2", 1)
    with pytest.raises(LoginThrottled) as refused:
        throttle.check("eu:a@example.com", "10.0.0.3")  # another address: the account counts
    error = refused.value
    assert (error.status, error.code) == (429, "too_many_login_attempts")
    assert json.loads(error.body())["error"]["code"] == "too_many_login_attempts"
    assert retry_after(refused) == 50  # the first failure ages out 60 s after it, at +60
    throttle.check("eu:b@example.com", "10.0.0.3")  # other accounts are not affected


def test_an_address_is_refused_after_failures_across_accounts(throttle: LoginThrottle) -> None:
    for n in range(5):
        fail(throttle, f"eu:user{n}@example.com", "10.0.0.9", 1)
    with pytest.raises(LoginThrottled):
        throttle.check("eu:fresh@example.com", "10.0.0.9")
    throttle.check("eu:fresh@example.com", "10.0.0.10")


def test_the_window_slides(throttle: LoginThrottle, clock: FakeClock) -> None:
    fail(throttle, "eu:a@example.com", "10.0.0.1", 3)
    clock.advance(59)
    with pytest.raises(LoginThrottled) as refused:
        throttle.check("eu:a@example.com", "10.0.0.1")
    assert retry_after(refused) == 1
    clock.advance(1)
    throttle.check("eu:a@example.com", "10.0.0.1")


def test_success_clears_the_account_and_takes_back_only_its_own_attempt(
        throttle: LoginThrottle) -> None:
    fail(throttle, "eu:a@example.com", "10.0.0.1", 2)
    throttle.check("eu:a@example.com", "10.0.0.1")  # the third attempt: the right password
    throttle.succeeded("eu:a@example.com", "10.0.0.1")
    fail(throttle, "eu:a@example.com", "10.0.0.1", 2)  # 3 + 2 > 3 had it not been cleared
    throttle.check("eu:a@example.com", "10.0.0.2")
    # The address counts 4 failures (the successful attempt taken back): one more is allowed,
    # then it is refused; had the success cleared the address it would not be.
    fail(throttle, "eu:b@example.com", "10.0.0.1", 1)
    with pytest.raises(LoginThrottled):
        throttle.check("eu:c@example.com", "10.0.0.1")


def test_an_attempt_counts_from_check_and_a_refused_one_not_at_all(
        throttle: LoginThrottle, clock: FakeClock) -> None:
    for _ in range(3):
        throttle.check("eu:a@example.com", "10.0.0.1")  # no separate "failed" step
    for _ in range(10):
        with pytest.raises(LoginThrottled):
            throttle.check("eu:a@example.com", "10.0.0.1")
    throttle.check("eu:b@example.com", "10.0.0.1")  # the address: 3 counted + this one
    throttle.check("eu:c@example.com", "10.0.0.1")
    with pytest.raises(LoginThrottled):
        throttle.check("eu:d@example.com", "10.0.0.1")


def test_memory_is_bounded_forgetting_the_least_recent(
        workspace_settings: WorkspaceSettings, clock: FakeClock) -> None:
    throttle = LoginThrottle(workspace_settings, clock, max_keys=2)
    fail(throttle, "old", "10.0.0.1", 3)
    fail(throttle, "mid", "10.0.0.2", 1)
    fail(throttle, "new", "10.0.0.3", 1)
    throttle.check("old", "10.0.0.4")  # forgotten: a third account pushed it out
    # That attempt counted "old" again and pushed out "mid", now the least recent; the two
    # still tracked keep counting to their limit.
    fail(throttle, "new", "10.0.0.5", 2)
    with pytest.raises(LoginThrottled):
        throttle.check("new", "10.0.0.6")
    fail(throttle, "mid", "10.0.0.7", 2)  # starts again from nothing: 2 of 3
    throttle.check("mid", "10.0.0.8")
