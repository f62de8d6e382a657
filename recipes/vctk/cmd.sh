# Where jobs run. The default runs everything on this machine; to use a Slurm cluster:
#   export train_cmd="../utils/run_slurm.sh" SLURM_OPTS="--gres=gpu:1 --time=72:00:00"
# Each *_cmd is called as: $cmd LOGFILE command args...
export train_cmd=${train_cmd:-"../utils/run_local.sh"}
export decode_cmd=${decode_cmd:-"../utils/run_local.sh"}
export cpu_cmd=${cpu_cmd:-"../utils/run_local.sh"}
