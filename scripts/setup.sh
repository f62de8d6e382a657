#!/usr/bin/env bash
# Make a working speechsq environment on this machine; safe and fast to run again.
#
#   * uses the active virtual environment, or creates ./.venv (Python >= 3.11);
#   * installs speechsq (editable) with the pinned versions of requirements/constraints.txt;
#   * installs Debian's espeak-ng (the embedded corpus synthesiser) when it is missing.
#
# A stamp file records what was installed, so a second run only checks and returns.
# Usage: bash scripts/setup.sh [--extras test,bench]   (default: test,bench,fid)
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
extras="test,bench,fid"   # bench: the named peers (vector-quantize-pytorch, zerospeech-libriabx2) that benchmarks and agreement tests compare against; fid: torch-fidelity for the standard FID
while [ $# -gt 0 ]; do
  case "$1" in
    --extras) extras="$2"; shift 2 ;;
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
    *) echo "setup.sh: unknown option $1" >&2; exit 2 ;;
  esac
done

log() { echo "[setup $(date +%H:%M:%S)] $*" >&2; }

# --- system package: espeak-ng ------------------------------------------------------
if ! command -v espeak-ng >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    log "installing espeak-ng with apt-get"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq espeak-ng >/dev/null) \
      || log "WARNING: apt-get could not install espeak-ng; the embedded corpus will not be available"
  elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    log "installing espeak-ng with sudo apt-get"
    (sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq espeak-ng >/dev/null) \
      || log "WARNING: could not install espeak-ng"
  else
    log "WARNING: espeak-ng is missing and cannot be installed without root; install it to build the embedded corpus"
  fi
fi

# --- Python environment --------------------------------------------------------------
if [ -n "${VIRTUAL_ENV:-}" ]; then
  venv="$VIRTUAL_ENV"
else
  venv="$root/.venv"
  if [ ! -x "$venv/bin/python" ]; then
    py=""
    for cand in python3.11 python3.12 python3.13 python3; do
      if command -v "$cand" >/dev/null 2>&1 && "$cand" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
        py="$cand"; break
      fi
    done
    [ -n "$py" ] || { echo "setup.sh: Python >= 3.11 is required" >&2; exit 1; }
    log "creating virtual environment $venv with $py"
    "$py" -m venv "$venv"
  fi
fi
python="$venv/bin/python"

stamp="$venv/.speechsq-setup"
want=$(cat "$root/pyproject.toml" "$root/requirements/constraints.txt" | sha256sum | cut -c1-16)-$extras
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && "$python" -c 'import speechsq, torch' 2>/dev/null; then
  log "environment up to date ($venv)"
  exit 0
fi
log "installing speechsq[$extras] into $venv (first time: a few minutes, torch is large)"
pip_log="$venv/speechsq-setup.log"
"$python" -m pip install -q --upgrade pip >"$pip_log" 2>&1 || true
# pip's build chatter goes to a log; it is shown only if the install fails.
if ! "$python" -m pip install -q -c "$root/requirements/constraints.txt" -e "$root[$extras]" >>"$pip_log" 2>&1; then
  tail -n 40 "$pip_log" >&2
  echo "setup.sh: pip install failed (full log: $pip_log)" >&2
  exit 1
fi
echo "$want" > "$stamp"
log "done: activate with 'source $venv/bin/activate'"
