#!/usr/bin/env bash
# Install ponderkit on a GPU machine that has torch but no network: wheels for the missing pure
# Python dependencies travel in .whl/ (see benchmarks/README.md). Source this file:
#   source benchmarks/gpu_setup.sh
set -e
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
python3 -m pip install -q --upgrade --no-index --no-deps --no-build-isolation --target /tmp/site .
export PYTHONPATH=/tmp/site
export PONDERKIT_CACHE=${PONDERKIT_CACHE:-$PWD/.carry/cache}
python3 -c "import torch, ponderkit; print('torch', torch.__version__, torch.cuda.get_device_name())"
set +e
