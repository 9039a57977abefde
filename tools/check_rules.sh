#!/usr/bin/env bash
# make lint: the Prometheus rules, their unit tests, and the files generated from them.
#   promtool check rules / test rules   (Debian's prometheus package; installed when missing)
#   the PrometheusRule and the Grafana dashboard match their generators
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}

if ! command -v promtool >/dev/null; then
	if [ "$(id -u)" = 0 ]; then
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
	elif command -v sudo >/dev/null; then
		sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
	else
		echo "promtool is missing (Debian package prometheus) and cannot be installed without root" >&2
		exit 1
	fi
fi

promtool check rules deploy/prometheus/sftp-ipi-rules.yaml
promtool test rules deploy/prometheus/tests/*.yaml
"$PY" tools/prometheus_rule.py --check
"$PY" tools/grafana_dashboard.py --check
