#!/usr/bin/env bash
# Train on this machine with a local Ray instance: launch/local.sh CONFIG [dml-dist train flags...]
# Arguments are passed to dml-dist as they are ("$@"): no config value is interpreted by a shell.
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/dml-dist train "$@"
