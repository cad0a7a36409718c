#!/bin/sh
# Start Prometheus with MLflow's login for the `mlflow` scrape job taken from the environment
# (MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD, the trainer's login): the password goes to a
# file only this user can read, the user name into a rendered copy of the configuration (as a JSON
# string, so no value can change the YAML around it). Both live in /tmp, not in the data volume.
set -eu
umask 077
printf '%s' "${MLFLOW_TRACKING_PASSWORD:-}" > /tmp/mlflow-password
python3 -c 'import json, os, sys
text = open(sys.argv[1]).read()
sys.stdout.write(text.replace("__MLFLOW_USERNAME__", json.dumps(os.environ.get("MLFLOW_TRACKING_USERNAME") or "admin")))' \
  /etc/prometheus/prometheus.yml > /tmp/prometheus.yml
exec /usr/bin/prometheus --config.file=/tmp/prometheus.yml "$@"
