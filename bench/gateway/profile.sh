#!/usr/bin/env bash
# Profile Domicile's gateway alone: `domicile serve` under pyinstrument for a fixed number
# of requests; the text report goes to bench/out/profile-domicile.txt and a summary into
# bench/RESULTS.md (re-rendered from the last run's bench/out/results.json).
#   bench/gateway/profile.sh [--profile-requests N]
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
exec "$HERE/run.sh" --profile-only "$@"
