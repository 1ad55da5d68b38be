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

if [ -x "${VENV}/bin/checkov" ] && "${VENV}/bin/checkov" --version >/dev/null 2>&1; then
  exit 0
fi

rm -rf "${VENV}"
"${PYTHON}" -m venv "${VENV}"
"${VENV}/bin/pip" install --quiet --disable-pip-version-check --upgrade pip
"${VENV}/bin/pip" install --quiet --disable-pip-version-check "checkov==${CHECKOV_VERSION}"
"${VENV}/bin/checkov" --version
