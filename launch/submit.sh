#!/usr/bin/env bash
# Submit a training job to a Ray cluster through Ray Jobs and follow its logs:
#   launch/submit.sh http://HEAD:8265 configs/quickstart.yaml [--workers 8] [--set key=value ...]
# Token authentication: the token comes from RAY_AUTH_TOKEN or ~/.ray/auth_token.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$#" -lt 2 ]; then
  echo "usage: launch/submit.sh DASHBOARD_ADDRESS CONFIG [dml-dist submit flags...]" >&2
  exit 2
fi
address="$1"
shift
exec .venv/bin/dml-dist submit "$@" --address "$address"
