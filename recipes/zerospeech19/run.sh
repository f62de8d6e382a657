#!/usr/bin/env bash
# Placeholder until the recipe lands: sets up the environment and says so.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
. "$root/scripts/activate.sh"
echo "speechsq is set up; the zerospeech19 recipe stages are not in this version yet."
