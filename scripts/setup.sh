# Shared by scripts/demo and scripts/test: sourced, not run.
# Makes .venv with the project installed, using only python3 and (if needed) apt-get.

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

apt_install() {
  if [ -z "${APT_UPDATED:-}" ]; then
    as_root apt-get update -qq
    APT_UPDATED=1
  fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

ensure_venv() {  # ensure_venv [extras]
  local python=${PYTHON:-python3}
  if ! "$python" -c 'import sys; assert sys.version_info >= (3, 11)' 2>/dev/null; then
    echo "abtest-exporter needs Python 3.11 or newer as $python" >&2
    exit 1
  fi
  if [ ! -x .venv/bin/python ]; then
    if ! "$python" -m venv .venv 2>/dev/null; then
      rm -rf .venv
      apt_install python3-venv
      "$python" -m venv .venv
    fi
  fi
  local spec=.
  [ -n "${1:-}" ] && spec=".[$1]"
  .venv/bin/python -m pip install -q --disable-pip-version-check -e "$spec"
}
