#!/usr/bin/env bash
# Make sure the machine's PostgreSQL (127.0.0.1:5432, trust auth) and Redis (127.0.0.1:6379)
# answer: start them from the Debian packages when they do not, installing the packages
# when they are missing (root only). Also installs chromium and chromedriver (Debian packages)
# for the console's browser tests, and prometheus for `kinfer up`, when they are missing.
set -euo pipefail

answers() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

need_pkg() {  # need_pkg BINARY PACKAGE
  command -v "$1" >/dev/null 2>&1 && return 0
  ls /usr/lib/postgresql/*/bin/"$1" >/dev/null 2>&1 && return 0
  if [ "$(id -u)" != 0 ]; then
    echo "services: $1 is missing; install it with: sudo apt-get install -y $2" >&2
    exit 1
  fi
  echo "services: installing $2"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null
}

if ! answers 5432; then
  need_pkg pg_ctlcluster postgresql
  if [ -z "$(ls /etc/postgresql 2>/dev/null)" ]; then
    version="$(ls /usr/lib/postgresql | sort -n | tail -1)"
    pg_createcluster "${version}" main >/dev/null
  fi
  cluster="$(ls /etc/postgresql | sort -n | tail -1)"
  conf="/etc/postgresql/${cluster}/main/pg_hba.conf"
  # Local development and CI only: trust connections from this machine.
  if ! grep -q '^host all all 127.0.0.1/32 trust' "${conf}"; then
    sed -i '1i host all all 127.0.0.1/32 trust\nhost all all ::1/128 trust\nlocal all all trust' "${conf}"
  fi
  pg_ctlcluster --skip-systemctl-redirect "${cluster}" main start
  for _ in $(seq 50); do answers 5432 && break; sleep 0.2; done
  answers 5432 || { echo "services: PostgreSQL did not start" >&2; exit 1; }
  echo "services: started PostgreSQL ${cluster}"
fi

if ! answers 6379; then
  need_pkg redis-server redis-server
  mkdir -p /var/lib/redis /var/log/redis 2>/dev/null || true
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
    --dir /tmp --logfile /tmp/kinfer-redis.log
  for _ in $(seq 50); do answers 6379 && break; sleep 0.1; done
  answers 6379 || { echo "services: Redis did not start" >&2; exit 1; }
  echo "services: started Redis"
fi

# The console's browser tests (tests/e2e/test_console_browser.py) drive Debian's chromium through
# chromedriver; without root they fail, saying what to install.
if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    echo "services: installing chromium chromium-driver"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
  else
    echo "services: chromium or chromedriver is missing (the console's browser tests need them):" \
      "sudo apt-get install -y chromium chromium-driver" >&2
  fi
fi

# `kinfer up` runs Prometheus on 127.0.0.1:9090 when the Debian package is installed (scripts/prometheus.sh).
"$(dirname "${BASH_SOURCE[0]}")/prometheus.sh"
