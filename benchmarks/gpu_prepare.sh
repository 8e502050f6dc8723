#!/usr/bin/env bash
# Prepare, here, what benchmarks/gpu.sh needs on the device machine (Python 3.12, x86-64, no registry, no ../shared there):
#  .whl/      the service's wheels missing from the device image;
#  .gpu-data/ a Market-layout subset of the shared CUHK03 copy (first TRAIN_IDS training and TEST_IDS test identities)
#             and the OSNet peer file, for the HTTP enrolment and the short training run.
# Both are ignored by git and travel with the call: run(command="bash benchmarks/gpu.sh", carry=[".whl", ".gpu-data"]).
# Its image already holds torch, torchvision, numpy, pillow, httpx, anyio, h11, click, prometheus-client, onnx and
# onnxruntime; what the service needs beside those goes into .whl/ (ignored by git, carried with `carry: [".whl"]`).
# Usage: benchmarks/gpu_prepare.sh   (wheels about 32 MiB, data about 5 MiB; the tree plus both must stay under 64 MiB: checked at the end)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
rm -rf .whl && mkdir -p .whl
PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
           --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform manylinux_2_34_x86_64 --platform any)
PACKAGES=(
  fastapi starlette pydantic pydantic-core pydantic-settings annotated-types typing-inspection python-dotenv
  python-multipart simplejpeg uvicorn sqlalchemy greenlet alembic mako faiss-cpu typing-extensions limits deprecated cryptography cffi pycparser
)
# the versions installed here (tested together), not the newest ones
mapfile -t PINNED < <("$PY" -c 'import sys, importlib.metadata as m; [print(f"{p}=={m.version(p)}") for p in sys.argv[1:]]' "${PACKAGES[@]}")
"$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${PLATFORMS[@]}" -d .whl "${PINNED[@]}"
du -sh .whl && ls .whl

DATA=${DATA:-../shared/datasets/cuhk03-detected}
TRAIN_IDS=${TRAIN_IDS:-70}
TEST_IDS=${TEST_IDS:-50}
rm -rf .gpu-data && mkdir -p .gpu-data/cuhk03-subset/{bounding_box_train,bounding_box_test,query}
"$PY" - "$DATA" .gpu-data/cuhk03-subset "$TRAIN_IDS" "$TEST_IDS" <<'PYEOF'
import shutil, sys
from pathlib import Path
src, dst, n_train, n_test = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
for part, limit in (("bounding_box_train", n_train), ("bounding_box_test", n_test), ("query", n_test)):
    ids = sorted({p.name[:4] for p in (src / part).glob("*.jpg") if not p.name.startswith("-1")})
    keep = set(ids[:limit]) if part == "bounding_box_train" else set(sorted({p.name[:4] for p in (src / "query").glob("*.jpg")})[:limit])
    for p in (src / part).glob("*.jpg"):
        if p.name[:4] in keep:
            shutil.copy2(p, dst / part / p.name)
PYEOF
PEER=$(dirname "$(dirname "$DATA")")/peers/osnet_x0_25_msmt17.onnx
[ -f "$PEER" ] && cp "$PEER" .gpu-data/
du -sh .gpu-data && find .gpu-data -name '*.jpg' | wc -l
# what travels: tracked and untracked-not-ignored files, plus the two carried folders (limit 64 MiB)
total=$( { git ls-files -z --cached --others --exclude-standard | xargs -0 -r du -cb 2>/dev/null | tail -1 | cut -f1; du -sb .whl .gpu-data | cut -f1; } | paste -sd+ | bc)
echo "travels: $((total / 1048576)) MiB of 64"
[ "$total" -lt $((64 * 1048576)) ] || { echo "over the 64 MiB limit: lower TRAIN_IDS / TEST_IDS" >&2; exit 1; }
