#!/usr/bin/env bash
# Local job runner (the default of cmd.sh): run_local.sh LOGFILE command args...
# Runs the command here, tees its output to LOGFILE, and fails with the command.
set -euo pipefail
log=$1; shift
mkdir -p "$(dirname "$log")"
echo "# $* (started $(date '+%F %T'))" > "$log"
set +e
"$@" 2>&1 | tee -a "$log"
rc=${PIPESTATUS[0]}
set -e
echo "# finished $(date '+%F %T') with exit code $rc" >> "$log"
exit "$rc"
