#!/usr/bin/env bash
# Run one node of a multi-node z2all job: monitor_process.py around torchrun, with c10d rendezvous.
#
#   scripts/multinode.sh train.py CONFIG.py --out_dir=RUN [--key=value ...]
#
# Start it once on every node (scripts/slurm.sbatch does so under Slurm). Each node runs its own monitor,
# which restarts its own torchrun; the restarted agents meet again in the rendezvous named RDZV_ID. RUN must
# be on a file system all nodes share: the checkpoints, heartbeat.json and exit_status.json live there.
#
# Settings (environment variables):
#   NNODES          number of nodes                    default: $SLURM_NNODES, else 1
#   NODE_RANK       this node's index, 0..NNODES-1     default: $SLURM_NODEID, else 0 (for logs and the check
#                                                      below: c10d assigns the ranks itself)
#   MASTER_ADDR     the rendezvous host                default: under Slurm the job's first node (from
#                                                      `scontrol show hostnames`); else this node's first
#                                                      address (`hostname -I`) on node 0; other nodes must be
#                                                      told
#   MASTER_PORT     the rendezvous port                default: 29500
#   NPROC_PER_NODE  processes (GPUs) per node          default: $SLURM_GPUS_ON_NODE, else the GPUs that
#                                                      nvidia-smi lists, else 1
#   RDZV_ID         the rendezvous name                default: $SLURM_JOB_ID, else z2all
#   MONITOR_ARGS    options for monitor_process.py     default: none (e.g. "--max_restarts=20")
#   PYTHON          the interpreter                    default: python
#   TORCHRUN        the launcher                       default: torchrun
#   DRY_RUN=1       print the command instead of running it
#
# torchrun runs with --max_restarts=0: every failure goes to the monitor, which knows train.py's exit codes,
# detects hangs and resumes from the last checkpoint (torchrun's own restarts rerun the same command).
set -euo pipefail

die() {
    echo "error: scripts/multinode.sh: $*" >&2
    exit 2
}

[[ $# -gt 0 ]] || die "no training command; usage: scripts/multinode.sh train.py CONFIG.py --out_dir=RUN [--key=value ...]"

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
NNODES="${NNODES:-${SLURM_NNODES:-1}}"
NODE_RANK="${NODE_RANK:-${SLURM_NODEID:-0}}"
MASTER_PORT="${MASTER_PORT:-29500}"
RDZV_ID="${RDZV_ID:-${SLURM_JOB_ID:-z2all}}"
PYTHON="${PYTHON:-python}"
TORCHRUN="${TORCHRUN:-torchrun}"

if [[ -z "${MASTER_ADDR:-}" ]]; then
    if [[ -n "${SLURM_JOB_NODELIST:-}" ]]; then
        # every node resolves the same first host of the allocation, so nothing is passed between nodes; read
        # whole, not through `| head -n 1`: head closes the pipe after one line, scontrol's next write dies of
        # SIGPIPE, and pipefail then ends the script with 141 (seen in the tests under load)
        hosts="$(scontrol show hostnames "$SLURM_JOB_NODELIST")"
        MASTER_ADDR="${hosts%%$'\n'*}"
    elif [[ "$NODE_RANK" == 0 ]]; then
        MASTER_ADDR="$(hostname -I 2>/dev/null | awk '{print $1}')"
        MASTER_ADDR="${MASTER_ADDR:-$(hostname)}"
    else
        die "NODE_RANK=$NODE_RANK needs MASTER_ADDR (the address of node 0): set MASTER_ADDR=<host of node 0>"
    fi
fi

if [[ -z "${NPROC_PER_NODE:-}" ]]; then
    if [[ -n "${SLURM_GPUS_ON_NODE:-}" ]]; then
        NPROC_PER_NODE="$SLURM_GPUS_ON_NODE"
    elif command -v nvidia-smi >/dev/null 2>&1; then
        NPROC_PER_NODE="$(nvidia-smi -L | grep -c '^GPU' || true)"
    fi
    [[ "${NPROC_PER_NODE:-0}" -gt 0 ]] || NPROC_PER_NODE=1
fi

for var in NNODES NODE_RANK MASTER_PORT NPROC_PER_NODE; do
    [[ "${!var}" =~ ^[0-9]+$ ]] || die "$var must be a whole number (got '${!var}')"
done
[[ "$NNODES" -ge 1 && "$NODE_RANK" -lt "$NNODES" ]] || die "need 0 <= NODE_RANK < NNODES (got NODE_RANK=$NODE_RANK, NNODES=$NNODES)"

monitor_args=()
if [[ -n "${MONITOR_ARGS:-}" ]]; then
    read -r -a monitor_args <<<"$MONITOR_ARGS"
fi

cmd=("$PYTHON" "$ROOT/monitor_process.py" "${monitor_args[@]}" --
     "$TORCHRUN" "--nnodes=$NNODES" "--nproc_per_node=$NPROC_PER_NODE" --rdzv_backend=c10d
     "--rdzv_endpoint=$MASTER_ADDR:$MASTER_PORT" "--rdzv_id=$RDZV_ID" --max_restarts=0 "$@" --auto_resume)

echo "node $NODE_RANK/$NNODES on $(hostname): rendezvous $RDZV_ID at $MASTER_ADDR:$MASTER_PORT, $NPROC_PER_NODE processes" >&2
if [[ "${DRY_RUN:-0}" == 1 ]]; then
    printf '%q ' "${cmd[@]}"
    echo
    exit 0
fi
exec "${cmd[@]}"
