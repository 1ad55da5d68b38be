#!/usr/bin/env bash
# Install Debian's prometheus for `kinfer up` (it runs it on 127.0.0.1:9090, scraping every part) when
# it is missing: as root only, without the recommended exporters, and with the system service the
# package starts stopped and disabled, so port 9090 stays free for the stack's own. Never fatal: without
# the package `kinfer up` starts everything else and says so.
set -uo pipefail

command -v prometheus >/dev/null 2>&1 && exit 0
if [ "$(id -u)" != 0 ]; then
  echo "prometheus is missing (kinfer up runs it on 9090):" \
    "sudo apt-get install -y --no-install-recommends prometheus" >&2
  exit 0
fi
echo "installing prometheus (Debian package)"
if ! { DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null &&
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null; }; then
  echo "prometheus could not be installed; kinfer up runs without it" >&2
  exit 0
fi
if [ -d /run/systemd/system ]; then  # systemd is the init: the package enabled and started its service
  systemctl disable --now prometheus >/dev/null 2>&1 || true
fi
exit 0
