#!/usr/bin/env bash
# Cluster job runner for cmd.sh: run_slurm.sh LOGFILE command args...
# Submits the command with `sbatch --wait` (extra sbatch options from $SLURM_OPTS, e.g.
# "--gres=gpu:1 --time=48:00:00") and returns its exit code; output goes to LOGFILE.
set -euo pipefail
log=$1; shift
mkdir -p "$(dirname "$log")"
command -v sbatch >/dev/null || { echo "run_slurm.sh: sbatch not found; use the local runner" >&2; exit 1; }
# shellcheck disable=SC2086
sbatch --wait --output="$log" ${SLURM_OPTS:-} --wrap="$(printf '%q ' "$@")"
