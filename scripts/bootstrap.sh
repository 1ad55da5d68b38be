#!/usr/bin/env bash
# Create or refresh .venv with the project and its dev/stack extras.
# A stamp holding pyproject.toml's hash makes it a fast no-op when nothing changed.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${ROOT}/.venv"
PYTHON="${PYTHON:-python3}"
STAMP="${VENV}/.kinfer-installed"
WANT="$(sha256sum "${ROOT}/pyproject.toml" | cut -d' ' -f1)"

if ! "${PYTHON}" -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else 1)'; then
  echo "bootstrap: Python 3.11 is required (the local Triton's Python backend stub is built for 3.11); set PYTHON=python3.11" >&2
  exit 1
fi
if [ -x "${VENV}/bin/python" ] && [ -f "${STAMP}" ] && [ "$(cat "${STAMP}")" = "${WANT}" ]; then
  exit 0
fi
echo "bootstrap: installing Kinfer and its dependencies into .venv (first run takes a minute or two)"
[ -x "${VENV}/bin/python" ] || "${PYTHON}" -m venv "${VENV}"
"${VENV}/bin/pip" install --quiet --disable-pip-version-check --upgrade pip
"${VENV}/bin/pip" install --quiet --disable-pip-version-check -e "${ROOT}[dev]"
echo "${WANT}" > "${STAMP}"
