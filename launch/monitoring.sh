#!/usr/bin/env bash
# Start Prometheus (Debian's package) on 127.0.0.1:9090 with the project's configuration, which
# discovers training workers (metrics.targets_dir) and Ray's own metrics. With Grafana installed,
# point it at cluster/grafana/provisioning (data source + the dml-dist dashboard), or use
# cluster/docker-compose.yml, which starts both.
set -euo pipefail
cd "$(dirname "$0")/.."
data_dir="${PROMETHEUS_DATA:-runs/prometheus-data}"
mkdir -p "$data_dir" /tmp/dml-dist/prometheus-targets
exec prometheus \
  --config.file=cluster/prometheus/prometheus.yml \
  --web.listen-address=127.0.0.1:9090 \
  --storage.tsdb.path="$data_dir"
