#!/usr/bin/env bash
# One stage of issue 21's GPU measurements on a lent GPU machine (the `device` tool's `run`),
# each stage sized to fit one 10-minute call. Prepared here, where no GPU was lent: a session
# that gets one runs, from the repository root,
#
#   make device-wheels                  # here, before the first call: ~40 MB into .device-wheels/
#   run(command="bash bench/device/gpu.sh compile", carry=[".device-wheels"], timeout_s=590)
#   run(command="bash bench/device/gpu.sh service", carry=[".device-wheels"], timeout_s=590)
#
# and copies the JSON files that come back from $OUT into bench/results/, then
# `python -m bench.report`. Stages, in the order they matter to issue 21:
#   compile     bench.compile --case sd15-cuda: eager against compiled, batch 1 and 8, MFU
#   cudagraphs  the same with SFUMATO_COMPILE_MODE=reduce-overhead
#   service     bench.batching --model sd15-cuda with compilation on (the off run is
#               bench/results/batching-sd15-cuda.json; rerun it with `service-off` on the same
#               machine before comparing, the H200 of that run is not this machine)
#   service-off bench.batching --model sd15-cuda, compilation off
#
# The machine's python3 holds torch with CUDA, triton, numpy, scipy and pillow; the rest comes
# from the carried wheels (versions of requirements/lock.txt). Nothing can be downloaded there.
set -euo pipefail
cd "$(dirname "$0")/../.."
stage="${1:?stage: compile, cudagraphs, service or service-off}"
out="${OUT:-/tmp/sfumato-out}"
mkdir -p "$out"
# A --target folder first on PYTHONPATH, not a venv: the machine's python3 is itself a venv
# (/opt/torch/.venv), and a venv made from it would not see its torch.
site=/tmp/sfumato-site
py=python3
if [ ! -f "$site/.installed" ]; then
    "$py" -m pip install --quiet --no-index --no-deps --find-links .device-wheels --target "$site" \
        -r bench/device/requirements.txt
    touch "$site/.installed"
fi
export PYTHONPATH="$PWD:$PWD/client:$site" HF_HUB_OFFLINE=1 SFUMATO_LOG_LEVEL=INFO
nvidia-smi -L || true
"$py" -c 'import torch, diffusers, transformers, scipy; print("torch", torch.__version__, "cuda", torch.cuda.is_available(), "diffusers", diffusers.__version__, "transformers", transformers.__version__)'
data=/tmp/sfumato-bench
case "$stage" in
    compile) timeout 570 "$py" -m bench.compile --case sd15-cuda --data-dir "$data" ;;
    cudagraphs) timeout 570 "$py" -m bench.compile --case sd15-cuda --mode reduce-overhead \
        --out compile-sd15-cuda-cudagraphs --data-dir "$data" ;;
    service) timeout 570 "$py" -m bench.batching --model sd15-cuda --compile on --data-dir "$data" ;;
    service-off) timeout 570 "$py" -m bench.batching --model sd15-cuda --data-dir "$data" ;;
    *) echo "unknown stage $stage" >&2; exit 2 ;;
esac
# What the stage wrote under bench/results/ (newer than this script started) goes back in $OUT.
find bench/results -maxdepth 1 -name '*cuda*.json' -newer bench/device/gpu.sh -exec cp {} "$out"/ \;
ls -l "$out"
