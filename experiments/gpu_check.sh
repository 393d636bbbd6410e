#!/usr/bin/env bash
# The GPU checks in one call (about 5 minutes on an H100/H200): the gpu-marked tests, then the
# backends and attention benchmarks in bf16, fwd and fwd+bwd. Results go to $OUT (default
# /tmp/gpu_check): pytest.txt and one bench.md / bench.json per benchmark.
#
#   bash experiments/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-/tmp/gpu_check}"
mkdir -p "$out"
python -c "import jaxattn" 2>/dev/null || pip install -q -e ".[dev]"
python -c "import jax; print(jax.__version__, jax.devices())" | tee "$out/devices.txt"
timeout 150 python -m pytest -q -m gpu -p no:cacheprovider tests 2>&1 | tail -30 \
  | tee "$out/pytest.txt"
for pass in "" "--backward"; do
  name="backends${pass:+_bwd}"
  timeout 120 python -m experiments.bench --suite=backends $pass --dtype=bfloat16 \
    --heads=16 --head_dim=128 --seq_lens=4096,16384 --out="$out/$name" 2>&1 | tail -25
done
# implementation=None on a GPU: cuDNN for dense and SSMax in bf16.
timeout 90 python -m experiments.bench --kinds=dense,ssmax,local --backward --dtype=bfloat16 \
  --heads=16 --head_dim=128 --seq_lens=4096,16384 --out="$out/default_bwd" 2>&1 | tail -20
