#!/usr/bin/env bash
# Issue 5's GPU checks in one run, on a CUDA machine that has its own torch (>= 2.4) and no internet:
#
#     bash scripts/bench/gpu_check.sh OUT
#
# 1. OUT/device.txt: torch, CUDA and the card's name.
# 2. OUT/tests.txt: the suite's torch-side tests on this torch, the CUDA-only ones included (the builder's
#    tests are left out: its operators need opencv-contrib, which GPU images rarely hold).
# 3. OUT/benchmark.txt and OUT/benchmark.json: scripts/bench/benchmark.py on the GPU (bf16/fp16, channels_last,
#    CUDA graphs, 8 videos a batch, 100 frames), training cached vs on the fly with FlowNet2; the FlowNet2
#    file is written with the real architecture and random values (cost does not depend on them). Its
#    "output_layers" rows time the 7×7 output layers by the plain conv and by columns on the GPU: the column
#    route is on for CPU only (ColumnConvLayer.devices) until those figures say it pays on CUDA too.
# 4. OUT/benchmark_compile.txt: the forward with torch.compile on top.
# Missing Python packages (scikit-video, lpips) can be installed from wheels first: PIP_WHEELS=DIR.
set -uo pipefail
out=${1:?usage: bash scripts/bench/gpu_check.sh OUT}
mkdir -p "$out"
cd "$(dirname "$0")/../.."
py=${PYTHON:-python3}
if [ -n "${PIP_WHEELS:-}" ]; then
    $py -m pip install -q --no-index --no-deps --target /tmp/tdms-site "$PIP_WHEELS"/*.whl || exit 1
    export PYTHONPATH=/tmp/tdms-site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
$py -c "import torch; assert torch.cuda.is_available(), 'torch sees no GPU'; \
print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())" \
    | tee "$out/device.txt" || exit 1
$py -m pytest -rs -p no:cacheprovider --ignore tests/builder tests 2>&1 | tee "$out/tests.txt"
weights=/tmp/tdms-flownet2-random.pth
$py -c "import torch; from tdms.flow.flownet2_net import FlowNet2; torch.manual_seed(0); \
torch.save({'epoch': 0, 'state_dict': FlowNet2().state_dict(), 'best_EPE': 1e10}, '$weights')" || exit 1
$py scripts/bench/benchmark.py --device cuda --train-steps 10 --train-flow flownet2 --train-flow-checkpoint "$weights" \
    --json "$out/benchmark.json" --plot "$out/benchmark.png" 2>&1 | tee "$out/benchmark.txt"
$py scripts/bench/benchmark.py --device cuda --sizes 854x480 --dtype bf16 --compile --train-steps 0 \
    --json "$out/benchmark_compile.json" 2>&1 | tee "$out/benchmark_compile.txt"
