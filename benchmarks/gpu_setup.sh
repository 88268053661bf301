#!/usr/bin/env bash
# Install ponderkit on a GPU machine that has torch but no network: wheels for the missing pure
# Python dependencies travel in .whl/ (see benchmarks/README.md). Source this file:
#   source benchmarks/gpu_setup.sh
# Here, before a call, record the commit the sources come from (no .git travels), so that every
# run's meta.json names it:
#   bash benchmarks/gpu_setup.sh commit       # writes .carry/commit: "HASH DIRTY(0|1)"
if [ "${1:-}" = commit ]; then
    mkdir -p .carry
    dirty=0; [ -n "$(git status --porcelain --untracked-files=no)" ] && dirty=1
    echo "$(git rev-parse HEAD) $dirty" > .carry/commit
    cat .carry/commit
    return 0 2>/dev/null || exit 0
fi
set -e
site=${PONDERKIT_SITE:-${TMPDIR:-/tmp}/ponderkit-site}  # where the wheels go on that machine
python3 -m pip install -q --upgrade --no-index --no-deps --no-compile --target "$site" .whl/*.whl
python3 -m pip install -q --upgrade --no-index --no-deps --no-build-isolation --target "$site" .
export PYTHONPATH=$site
export PONDERKIT_CACHE=${PONDERKIT_CACHE:-$PWD/.carry/cache}
if [ -f .carry/commit ]; then
    read -r PONDERKIT_GIT_COMMIT PONDERKIT_GIT_DIRTY < .carry/commit
    export PONDERKIT_GIT_COMMIT PONDERKIT_GIT_DIRTY
fi
python3 -c "import torch, ponderkit; print('torch', torch.__version__, torch.cuda.get_device_name())"
set +e
