# Source me: runs scripts/setup.sh, then puts its environment on PATH for this shell.
# (Used by the recipes and the test script so both README commands set up by themselves.)
_speechsq_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$_speechsq_root/scripts/setup.sh" ${SPEECHSQ_SETUP_EXTRAS:+--extras "$SPEECHSQ_SETUP_EXTRAS"}
if [ -z "${VIRTUAL_ENV:-}" ]; then
  # shellcheck disable=SC1091
  . "$_speechsq_root/.venv/bin/activate"
fi
unset _speechsq_root
