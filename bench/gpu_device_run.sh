#!/usr/bin/env bash
# On the lent GPU machine (carry .whl and .gpu, made by bench/gpu_carry.sh): install the wheels, show the stack,
# run bench/gpu_suite.py into $OUT. PARTS and DEADLINE (seconds for the whole suite) may be set.
set -o pipefail
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false TLSCALE_DATA=$PWD/.gpu/data
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 3
export PYTHONPATH=/tmp/site
nvidia-smi --query-gpu=name,memory.used,memory.total,clocks.sm,temperature.gpu --format=csv
check='import torch, transformers, accelerate, peft, bitsandbytes, deepspeed, pydantic, tlscale
print("stack:", torch.__version__, torch.version.cuda, transformers.__version__, accelerate.__version__, peft.__version__,
      bitsandbytes.__version__, deepspeed.__version__, pydantic.__version__)'
if ! python3 -c "$check" 2>&1 | tail -4; then
  echo "FALLBACK: the machine's own transformers and huggingface_hub"
  rm -rf /tmp/site/transformers* /tmp/site/huggingface_hub*
  python3 -c "$check" 2>&1 | tail -4
fi
echo "compiler: $(command -v g++) $(command -v nvcc)"; ls "$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["include"])')/Python.h"
python3 bench/gpu_suite.py --tokenizer .gpu/tokenizer --output "$OUT/results-gpu-suite.json" --parts ${PARTS:-a b d e c} \
  --deadline "${DEADLINE:-540}" 2>&1 | tee "$OUT/suite.log"
