#!/usr/bin/env bash
# Packs what bench/gpu_check.py needs on a GPU machine that cannot download: the Python wheels its image
# lacks (Python 3.12, x86-64) and SmolLM2's tokenizer, into .gpu/ (git-ignored through .git/info/exclude).
# The weights are not packed: the check uses random weights of SmolLM2's shape (speed and memory do not
# depend on their values). Then, on the GPU machine, from the repository root:
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .gpu/whl/*.whl
#   PYTHONPATH=/tmp/site:src python3 bench/gpu_check.py --tokenizer .gpu/tokenizer --data .gpu/alpaca_en_demo.json
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude
rm -rf .gpu && mkdir -p .gpu/whl
PY=${PY:-.venv/bin/python}
# the image has torch, transformers, peft, accelerate, safetensors, tokenizers, numpy, pyarrow, pandas,
# jinja2, pyyaml, tqdm, matplotlib, xxhash, fsspec, requests, huggingface-hub (KINDS.md); not these:
WHEELS=(pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5
        trl==1.16.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19
        bitsandbytes==0.50.2 liger-kernel)
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any \
  -d .gpu/whl "${WHEELS[@]}"
"$PY" - <<'EOF'
from herd.base import load_tokenizer, smollm2_tokenizer_dir

load_tokenizer(smollm2_tokenizer_dir()).save_pretrained(".gpu/tokenizer")
EOF
# the SFT data the throughput table trains on (../shared does not travel to the GPU machine)
cp ../shared/data/llamafactory_alpaca_en_demo/alpaca_en_demo.json .gpu/
du -sh .gpu
