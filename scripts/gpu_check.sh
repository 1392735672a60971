#!/usr/bin/env bash
# The GPU checks of the fused optimizer step, as ONE command for a session that is lent a GPU
# (see README, "GPU checks"): the fused tests on CUDA (compiled Triton, not the interpreter),
# the optimizer-step table on the 1.34 B list of ../shared/anchors and 100 M, and Table 2 end
# to end for LLaMA-60M and 350M. Results go to $OUT (the device tool's folder) or results/gpu.
#
# The device machine has torch, transformers and Triton but not hydra-core/omegaconf: carry
# them as wheels in .whl/ (git-ignored), e.g.
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux2014_x86_64 -d .whl hydra-core==1.3.2 omegaconf==2.3.0 \
#     antlr4-python3-runtime==4.9.3 PyYAML
set -uo pipefail
OUT=${OUT:-results/gpu}
mkdir -p "$OUT"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" \
  | tee -a "$OUT/gpu.txt"
timeout 240 python3 -m pytest -q -p no:cacheprovider tests/test_optim_fused.py \
  "tests/test_optim.py::test_no_host_sync_in_step_on_cuda" 2>&1 | tee "$OUT/tests.log"
timeout 240 python3 scripts/bench_optim.py --sizes 1B 100M --rounds 10 --out "$OUT" 2>&1 \
  | tee "$OUT/bench_optim.log"
timeout 240 python3 scripts/bench_train.py --sizes 60m 350m --out "$OUT" 2>&1 \
  | tee "$OUT/bench_train.log"
