#!/usr/bin/env bash
# Create .venv-checkov: checkov in its own virtualenv.
# In the main .venv checkov would downgrade boto3, and its bundled `hcl2` module
# collides with python-hcl2. Idempotent: a fast no-op when checkov already runs.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${ROOT}/.venv-checkov"
# Pinned so the check counts in docs/operations.md stay comparable between runs.
CHECKOV_VERSION="${CHECKOV_VERSION:-3.3.30}"
PYTHON="${PYTHON:-python3}"

installed="$("${VENV}/bin/python" -c 'import importlib.metadata as m; print(m.version("checkov"))' 2>/dev/null || true)"
if [ -x "${VENV}/bin/checkov" ] && [ "${installed}" = "${CHECKOV_VERSION}" ]; then
  exit 0
fi

rm -rf "${VENV}"
"${PYTHON}" -m venv "${VENV}"
# Its dependencies as locked (scripts/lock writes requirements-checkov.lock), so a new release of one
# of them changes nothing here.
export PIP_CONSTRAINT="${ROOT}/requirements-checkov.lock" PIP_DISABLE_PIP_VERSION_CHECK=1
"${VENV}/bin/pip" install --quiet --upgrade pip setuptools wheel
"${VENV}/bin/pip" install --quiet "checkov==${CHECKOV_VERSION}"
"${VENV}/bin/checkov" --version
