#!/usr/bin/env bash
# Create or refresh .venv with the project and its dev/stack extras.
# A stamp holding pyproject.toml's hash makes it a fast no-op when nothing changed.
# Then put `kinfer` on PATH: a symlink ~/.local/bin/kinfer -> .venv/bin/kinfer (KINFER_BIN_DIR
# chooses another folder, KINFER_NO_LINK=1 skips it). An existing kinfer of another checkout
# or install is left alone. Without that folder on PATH, `source .venv/bin/activate` works too.
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
"${VENV}/bin/pip" install --quiet --disable-pip-version-check --upgrade pip
"${VENV}/bin/pip" install --quiet --disable-pip-version-check -e "${ROOT}[dev]"
echo "${WANT}" > "${STAMP}"
link_kinfer
