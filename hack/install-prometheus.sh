#!/usr/bin/env bash
# Installs a Prometheus server for the status-exporter integration tests (Debian package:
# /usr/bin/prometheus), only if none is on PATH; prints the binary's path. Idempotent. The
# package's systemd unit is irrelevant: tests start their own server on a loopback port.
set -euo pipefail
if ! command -v prometheus >/dev/null 2>&1; then
  echo "install-prometheus: installing the Debian prometheus package" >&2
  SUDO=""; [[ $(id -u) -eq 0 ]] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi
command -v prometheus
