#!/usr/bin/env bash
# Debian packages some tests and the real node need; installs only what is missing, so
# repeated runs are instant.
set -euo pipefail
need=()
command -v prometheus >/dev/null 2>&1 || need+=(prometheus)
command -v debootstrap >/dev/null 2>&1 || need+=(debootstrap)
# `make images` without a Docker engine: buildah (chroot isolation) builds the Dockerfiles.
command -v buildah >/dev/null 2>&1 || need+=(buildah)
# The real node (`fgo cluster add-real-node`): libseccomp-dev to build runc with seccomp (the
# chart's pods ask for the RuntimeDefault profile). iptables/conntrack are for rules inside a
# node's own network namespace only (today none are made: no kube-proxy, no KUBE-FIREWALL).
command -v iptables >/dev/null 2>&1 || need+=(iptables)
command -v conntrack >/dev/null 2>&1 || need+=(conntrack)
dpkg-query -W -f='${Status}' libseccomp-dev 2>/dev/null | grep -q "ok installed" || need+=(libseccomp-dev)
if ((${#need[@]})); then
  echo "installing Debian packages: ${need[*]}"
  SUDO=""; [[ $(id -u) -eq 0 ]] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  # The Debian package starts nothing without systemd; tests run their own Prometheus.
fi
