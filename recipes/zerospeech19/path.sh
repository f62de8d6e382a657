# Puts the speechsq environment on PATH, creating it on first use.
# SPEECHSQ_NO_SETUP=1 skips the set-up check (the caller already runs inside an environment
# with speechsq installed, as the recipe tests do).
repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
if [ -z "${SPEECHSQ_NO_SETUP:-}" ]; then
  . "$repo_root/scripts/activate.sh"
fi
export PYTHONUNBUFFERED=1 LC_ALL=C
