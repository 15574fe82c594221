from __future__ import annotations

import json
import os
import subprocess
import sys
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
def cli(tmp_path: Path) -> Cli:
    """Run the real `domicile` command in tmp_path (a fresh process, like a script would)."""

    def run(*args: str, stdin: str | None = None, cwd: Path | None = None) -> Result:
        env = {k: v for k, v in os.environ.items() if k != "DOMICILE_CONFIG"}
        done = subprocess.run([DOMICILE, *args], input=stdin, capture_output=True, text=True,
                              cwd=cwd or tmp_path, env=env, timeout=120)
        return Result(done.returncode, done.stdout, done.stderr)

    return run


@pytest.fixture
def site_config(cli: Cli, tmp_path: Path) -> str:
    result = cli("init", "--dir", "site", "--port-base", "18500", "--json")
    assert result.code == 0, result.stderr
    return str(tmp_path / "site" / "domicile.toml")
