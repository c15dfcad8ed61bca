# Shared steps of scripts/run and scripts/test (sourced, not run).
# Each step is idempotent: it does nothing when its work is already done.

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"

say() { printf '%s\n' "$*" >&2; }

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"
  elif command -v sudo >/dev/null; then sudo "$@"
  else say "need root to run: $*"; return 1
  fi
}

# ensure_apt PACKAGE... : install the Debian packages that are missing.
ensure_apt() {
  local missing=()
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  say "installing Debian packages: ${missing[*]}"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

python_ok() {
  "$1" -c 'import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 11))' 2>/dev/null
}

# ensure_venv EXTRAS : .venv with serialproxy installed (editable), EXTRAS like "[test,client]".
# A venv set up for more extras (scripts/test's) serves fewer (scripts/run's)
# as it is; asked for others, it is installed with all of them, so that
# scripts/run and scripts/test never undo each other's set-up.
ensure_venv() {
  local want="${1:-}" py=python3 digest stamp have extras
  python_ok "$py" || ensure_apt python3 python3-venv
  python_ok "$py" || { say "serialproxy needs Python 3.11 or newer with venv"; return 1; }
  # libvirt-python builds from source against libvirt's headers.
  ensure_apt pkg-config libvirt-dev gcc python3-dev
  digest="$(sha256sum < "$ROOT/setup.py" | cut -c1-16)"
  stamp="$(cat "$VENV/.serialproxy-stamp" 2>/dev/null || true)"  # DIGEST[extra,...] of the last install
  have=""
  if [ -x "$VENV/bin/python" ]; then
    have="$(extras_of "${stamp:16}")"
    if [ "${stamp:0:16}" = "$digest" ] && [ -z "$(comm -23 <(extras_of "$want") <(printf '%s\n' "$have"))" ]; then
      return 0
    fi
  fi
  extras="$(printf '%s\n%s\n' "$have" "$(extras_of "$want")" | sed '/^$/d' | sort -u | paste -sd, -)"
  extras="${extras:+[$extras]}"
  say "setting up $VENV"
  [ -x "$VENV/bin/python" ] || "$py" -m venv "$VENV"
  local log="$VENV/pip-install.log"
  # compat mode puts the checkout on sys.path, so twistd finds twisted/plugins/.
  if ! { "$VENV/bin/python" -m pip install -q --upgrade pip &&
         "$VENV/bin/python" -m pip install -q -e "$ROOT$extras" --config-settings editable_mode=compat; } >"$log" 2>&1; then
    cat "$log" >&2; say "pip install failed (log: $log)"; return 1
  fi
  "$VENV/bin/python" -c 'import serialproxy, klein, autobahn, psycopg2, libvirt' || return 1
  echo "$digest$extras" > "$VENV/.serialproxy-stamp"
}

# extras_of "[a,b]" : the extras, one a line, sorted (nothing for "").
extras_of() {
  local list="${1#[}"
  list="${list%]}"
  [ -n "$list" ] && printf '%s\n' "${list//,/$'\n'}" | sed '/^$/d' | sort -u
  return 0
}

free_port() {
  "$VENV/bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
