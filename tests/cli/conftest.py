from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

DOMICILE = str(Path(sys.executable).parent / "domicile")


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str

    @property
    def json(self) -> Any:
        return json.loads(self.stdout)


Cli = Callable[..., Result]


@pytest.fixture
def cli_process(tmp_path: Path) -> Cli:
    """Run the real `domicile` command in tmp_path (a fresh process, like a script would)."""

    def run(*args: str, stdin: str | None = None, cwd: Path | None = None) -> Result:
        env = {k: v for k, v in os.environ.items() if k != "DOMICILE_CONFIG"}
        done = subprocess.run([DOMICILE, *args], input=stdin, capture_output=True, text=True,
                              cwd=cwd or tmp_path, env=env, timeout=120)
        return Result(done.returncode, done.stdout, done.stderr)

    return run


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    """The `domicile` command's app run in this process, from tmp_path: what a command prints
    and its exit code, as `cli_process` gives them, without a Python start-up per call (the
    suite's time). tests/cli/test_commands.py runs the real command in its own processes."""
    from typer.testing import CliRunner

    from domicile.cli.main import app

    def run(*args: str, stdin: str | None = None, cwd: Path | None = None) -> Result:
        with contextlib.chdir(cwd or tmp_path):
            done = CliRunner(env={"DOMICILE_CONFIG": None}).invoke(
                app, list(args), input=stdin, catch_exceptions=True)
        if done.exception is not None and not isinstance(done.exception, SystemExit):
            # What the real command would have printed: a traceback, exit 1.
            stderr = "".join(traceback.format_exception(done.exception))
            return Result(1, done.stdout, done.stderr + stderr)
        return Result(done.exit_code, done.stdout, done.stderr)

    return run


@pytest.fixture
def site_config(cli: Cli, tmp_path: Path) -> str:
    result = cli("init", "--dir", "site", "--port-base", "18500", "--json")
    assert result.code == 0, result.stderr
    return str(tmp_path / "site" / "domicile.toml")
