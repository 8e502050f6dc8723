#!/usr/bin/env bash
# The GPU path in one device call (issue 11, item 5). Prepare here first, then one call:
#
#   benchmarks/gpu_prepare.sh                    # .whl/ (service wheels for the device's Python 3.12) + .gpu-data/ (crops subset)
#   device run: command="bash benchmarks/gpu.sh", carry=[".whl", ".gpu-data"], timeout_s=580
#
# On the machine: installs the wheels into /tmp/site (no registry there; torch, torchvision, numpy, pillow, httpx,
# onnxruntime come with its image), then, each step under its own time limit so that one failure never costs the rest:
#   1. the gpu-marked tests (tests/unit/test_gpu.py: fp16 CUDA features vs CPU, noise on the GPU, nvJPEG decode vs PIL);
#   2. benchmarks/gpu_encoder.py: crops/s fp32 / bf16 / fp16 x contiguous / channels_last x batch 64-512, and the
#      Embedder path at the best setting;
#   3. benchmarks/encoder_backends.py --device cuda: raw encoder crops/s and enrolment over HTTP (reid-gallery serve,
#      SQLite, REID_DEVICE=cuda) with REID_IMAGE_DECODE=cpu and =cuda in the same run;
#   4. if time is left (GPU_TRAIN=0 skips it): a short stage-one training at 256x128 on the carried subset (OSNet x0.25
#      from the MSMT17 peer when carried), to show the CUDA training path runs and how fast.
# Everything lands in $OUT (at most 8 files come back): summary.txt, gpu_tests.log, gpu_encoder.json, http_gpu.json,
# train.json, log.txt. Without a device tool (CI, a developer's machine) OUT defaults to runs/gpu.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/gpu}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/log.txt") 2>&1
export PYTHONUNBUFFERED=1
PY=${PY:-python3}
started=$(date +%s)
step() { echo "== $(($(date +%s) - started))s: $*"; }

step "install"
if [ -d .whl ]; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || echo "wheel install failed"
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/summary.txt"
"$PY" -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'cuda', torch.cuda.is_available())" | tee -a "$OUT/summary.txt"
DATA=.gpu-data/cuhk03-subset
[ -d "$DATA" ] || DATA=../shared/datasets/cuhk03-detected

step "1. gpu tests"
timeout 150 "$PY" -m pytest -m gpu tests/unit/test_gpu.py -q -p no:cacheprovider 2>&1 | tee "$OUT/gpu_tests.log" | tail -3
tail -1 "$OUT/gpu_tests.log" | sed 's/^/gpu tests: /' >> "$OUT/summary.txt"

step "2. encoder crops/s on the GPU"
timeout 180 "$PY" benchmarks/gpu_encoder.py --json "$OUT/gpu_encoder.json" > /dev/null || echo "gpu_encoder failed"
"$PY" -c "import json,sys; r=json.load(open(sys.argv[1])); print('best encoder cell:', r['best'], '| Embedder.embed:', r['embedder_embed_fp16_autocast'])" \
  "$OUT/gpu_encoder.json" 2>/dev/null | tee -a "$OUT/summary.txt"

step "3. raw encoder and HTTP enrolment, CPU vs GPU decoding"
timeout 200 "$PY" benchmarks/encoder_backends.py --device cuda --data "$DATA" --batch-sizes 64 128 256 --rounds 2 --seconds 2 \
  --http-crops 2048 --http-batch 64 --http-concurrency 8 --image-decode cpu cuda --json "$OUT/http_gpu.json" > /dev/null || echo "http benchmark failed"
"$PY" -c "import json,sys; r=json.load(open(sys.argv[1])); print('raw torch cuda:', r['torch_eager'], '| http by decode:', {k: v['crops_per_s'] for k, v in r.get('service_http_by_decode', {}).items()})" \
  "$OUT/http_gpu.json" 2>/dev/null | tee -a "$OUT/summary.txt"

left=$((540 - ($(date +%s) - started)))
if [ "${GPU_TRAIN:-1}" = "1" ] && [ "$left" -gt 90 ]; then
  step "4. short training at 256x128 (${left}s left)"
  WEIGHTS=()
  [ -f .gpu-data/osnet_x0_25_msmt17.onnx ] && WEIGHTS=(--backbone osnet_x0_25 --backbone-weights .gpu-data/osnet_x0_25_msmt17.onnx)
  timeout $((left - 30)) "$PY" -m models.cli.train --data "$DATA" --input-size 256x128 --epochs 3 --warmup-epochs 1 "${WEIGHTS[@]}" \
    --decoder-target pixelate --pixel-block 16 --adv-weight 0.1 --device cuda --run-dir /tmp/gpu-train --export /tmp/gpu-train/encoder.pt > /dev/null
  cp /tmp/gpu-train/summary.json "$OUT/train.json" 2>/dev/null && \
    "$PY" -c "import json,sys; r=json.load(open(sys.argv[1])); print('training:', r['hardware'], r['train_seconds'], 's', [h['seconds'] for h in r['history']], r['metrics'])" \
    "$OUT/train.json" | tee -a "$OUT/summary.txt"
fi
step "done"
