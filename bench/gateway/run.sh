#!/usr/bin/env bash
# One-command gateway benchmark: direct vs Domicile vs LiteLLM on one loopback upstream.
#   bench/gateway/run.sh [run.py options]      e.g. --no-profile, --contenders direct,litellm
# Installs wrk (Debian) and LiteLLM (its own venv, bench/.venv-litellm) when missing,
# then runs bench/gateway/run.py, which writes bench/RESULTS.md and bench/out/.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
PY="$ROOT/.venv/bin/python"
LITELLM_VENV="$ROOT/bench/.venv-litellm"

if [ ! -x "$PY" ]; then
  echo "missing $PY: create the project venv first (pip install -e '.[test,bench]')" >&2
  exit 1
fi
"$PY" -c "import aiohttp, uvloop, pyinstrument" 2>/dev/null || {
  echo "the project venv lacks aiohttp/uvloop/pyinstrument (pip install -e '.[bench]')" >&2
  exit 1
}

if ! command -v wrk >/dev/null 2>&1; then
  echo "[bench] installing wrk (Debian package)"
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq wrk >/dev/null
fi

if [ ! -x "$LITELLM_VENV/bin/litellm" ]; then
  echo "[bench] installing LiteLLM into $LITELLM_VENV (about 2 minutes)"
  rm -rf "$LITELLM_VENV"
  python3 -m venv "$LITELLM_VENV"
  "$LITELLM_VENV/bin/pip" install -q 'litellm[proxy]'
fi

mkdir -p "$ROOT/bench/out"
DRIVER_PID=""
cleanup() {
  # run.py stops its own servers; this only covers the driver being killed mid-way.
  if [ -n "$DRIVER_PID" ] && kill -0 "$DRIVER_PID" 2>/dev/null; then
    kill -TERM "$DRIVER_PID" 2>/dev/null || true
    for _ in $(seq 1 40); do kill -0 "$DRIVER_PID" 2>/dev/null || break; sleep 0.5; done
  fi
}
trap cleanup EXIT
trap 'cleanup; exit 130' INT TERM

"$PY" "$HERE/run.py" "$@" &
DRIVER_PID=$!
wait "$DRIVER_PID"
