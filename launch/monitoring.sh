#!/usr/bin/env bash
# Start Prometheus (Debian's package) on the Ray head, on 127.0.0.1:9090, with the shipped
# configuration: it reads Ray's service-discovery file, which lists every node's metrics agent,
# and so scrapes the training metrics of every worker on every node. With Grafana installed,
# point it at cluster/grafana/provisioning (data source + the dml-dist dashboard), or use
# cluster/docker-compose.yml, which starts both. PROMETHEUS_DATA sets the data directory.
set -euo pipefail
cd "$(dirname "$0")/.."
data_dir="${PROMETHEUS_DATA:-runs/prometheus-data}"
mkdir -p "$data_dir"
exec prometheus \
  --config.file=cluster/prometheus/prometheus.yml \
  --web.listen-address=127.0.0.1:9090 \
  --storage.tsdb.path="$data_dir"
