#!/usr/bin/env bash
# Long GPU work on a machine that answers one command at a time for at most a few minutes:
# start the work in the background, then come back to wait for it and collect its results.
#
#   bash benchmarks/gpu_background.sh start 'CMD 1' 'CMD 2' ...   # one after another, detached
#   bash benchmarks/gpu_background.sh wait SECONDS [DEST]          # wait up to SECONDS, report
#
# Each command runs from the repository root with its output in runs/gpu/NN.log; runs/gpu/status
# says which ran and how each ended. `wait` returns when all are done, the driver died, or
# SECONDS passed; it prints the status and the logs' last lines, then packs runs/gpu without
# its checkpoints/ folders into DEST/gpu.tgz (default: $OUT, the folder a device machine brings
# back), so a result survives the machine even when the work is unfinished. A finished run
# comes back with halting.json and no checkpoints, which `ablate` and `report` count as
# finished; a checkpoint folder without its weights would read as a damaged checkpoint.
# Source benchmarks/gpu_setup.sh first where ponderkit is not installed.
set -u
dir=runs/gpu
case "${1:-}" in
start)
    shift
    mkdir -p "$dir"
    printf '%s\n' "$@" > "$dir/commands"
    setsid nohup bash -c '
        dir=$1; shift; i=0
        for cmd in "$@"; do
            i=$((i + 1)); log=$(printf "%s/%02d.log" "$dir" "$i")
            echo "$(date +%T) start  $i: $cmd" >> "$dir/status"
            bash -c "$cmd" > "$log" 2>&1
            rc=$?
            echo "$(date +%T) exit $rc $i: $cmd" >> "$dir/status"
        done
        echo "$(date +%T) all done" >> "$dir/status"
    ' driver "$dir" "$@" > "$dir/driver.log" 2>&1 < /dev/null &
    echo $! > "$dir/driver.pid"
    echo "started $# command(s) in the background (driver pid $(cat "$dir/driver.pid"))"
    ;;
wait)
    end=$(( $(date +%s) + ${2:-60} ))
    dest=${3:-${OUT:-.}}
    pid=$(cat "$dir/driver.pid" 2>/dev/null)
    alive() { [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; }  # (kill -0 0: this very group)
    while [ "$(date +%s)" -lt "$end" ] && alive; do sleep 5; done
    if alive; then echo "still running"; elif [ -n "$pid" ]; then echo "driver finished"
    else echo "no driver started here"; fi
    cat "$dir/status" 2>/dev/null
    for log in "$dir"/[0-9]*.log; do
        [ -f "$log" ] && { echo "== $log"; tail -n 8 "$log"; }
    done
    command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=memory.used,utilization.gpu \
        --format=csv,noheader
    mkdir -p "$dest"
    tar czf "$dest/gpu.tgz" --exclude='checkpoints' "$dir"
    ls -l "$dest/gpu.tgz"
    ;;
*)
    echo "usage: $0 start 'CMD' ... | wait SECONDS [DEST]" >&2
    exit 2
    ;;
esac
