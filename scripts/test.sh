#!/usr/bin/env bash
# Set up (if needed) and run the default test suite: bash scripts/test.sh [pytest args]
# The long tests are marked `slow`; run them with: bash scripts/test.sh -m slow
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
. "$root/scripts/activate.sh"
cd "$root"
exec python -m pytest "$@"
