#!/usr/bin/env bash
# Create or refresh .venv with the project and its dev/stack extras, at exactly the versions of
# requirements-dev.lock (scripts/lock refreshes it), so the tests run what the image runs and a new
# upstream release changes nothing until the lock does. A stamp holding the hash of pyproject.toml
# and the lock makes it a fast no-op when neither changed.
# Then put `kinfer` on PATH: a symlink ~/.local/bin/kinfer -> .venv/bin/kinfer (KINFER_BIN_DIR
# chooses another folder, KINFER_NO_LINK=1 skips it). An existing kinfer of another checkout
# or install is left alone. Without that folder on PATH, `source .venv/bin/activate` works too.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${ROOT}/.venv"
PYTHON="${PYTHON:-python3}"
STAMP="${VENV}/.kinfer-installed"
LOCK="${ROOT}/requirements-dev.lock"
WANT="$(cat "${ROOT}/pyproject.toml" "${LOCK}" | sha256sum | cut -d' ' -f1)"

if ! "${PYTHON}" -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else 1)'; then
  echo "bootstrap: Python 3.11 is required (the local Triton's Python backend stub is built for 3.11); set PYTHON=python3.11" >&2
  exit 1
fi
link_kinfer() {
  [ "${KINFER_NO_LINK:-0}" = "1" ] && return 0
  local bin="${KINFER_BIN_DIR:-${HOME}/.local/bin}" target="${VENV}/bin/kinfer" current
  local link="${bin}/kinfer"
  mkdir -p "${bin}" 2>/dev/null || return 0
  current="$(readlink "${link}" 2>/dev/null || true)"
  if [ ! -e "${link}" ] || { [ -L "${link}" ] && [ ! -e "${current}" ]; }; then
    ln -sfn "${target}" "${link}"  # absent, or a link to a checkout that is gone
    echo "bootstrap: linked ${link} -> ${target}"
    case ":${PATH}:" in
      *":${bin}:"*) ;;
      *) echo "bootstrap: ${bin} is not on PATH: export PATH=\"${bin}:\$PATH\" (or source .venv/bin/activate)" ;;
    esac
  elif [ "${current}" != "${target}" ]; then
    echo "bootstrap: ${link} is another kinfer (${current:-a file}); left as is (this one: ${target})"
  fi
}

if [ -x "${VENV}/bin/python" ] && [ -f "${STAMP}" ] && [ "$(cat "${STAMP}")" = "${WANT}" ]; then
  link_kinfer
  exit 0
fi
echo "bootstrap: installing Kinfer and its dependencies into .venv (first run takes a minute or two)"
[ -x "${VENV}/bin/python" ] || "${PYTHON}" -m venv "${VENV}"
# PIP_CONSTRAINT (not only -c) so that the isolated build of the project takes the locked setuptools too.
export PIP_CONSTRAINT="${LOCK}" PIP_DISABLE_PIP_VERSION_CHECK=1
"${VENV}/bin/pip" install --quiet --upgrade pip setuptools wheel
"${VENV}/bin/pip" install --quiet -e "${ROOT}[dev]"
echo "${WANT}" > "${STAMP}"
link_kinfer
