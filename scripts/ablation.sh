#!/usr/bin/env bash
# Stage-one ablation on the shared CUHK03 split: same backbone and schedule for every row.
# Usage: scripts/ablation.sh [ROW ...]   (rows: f a c b d e g h; default all, in that order; g, h add the inversion adversary)
# Env: DATA (dataset folder), RUNS (where run folders go), EPOCHS, EXTRA (more reid-train flags).
set -euo pipefail
DATA=${DATA:-../shared/datasets/cuhk03-detected}
RUNS=${RUNS:-runs/ablation}
EPOCHS=${EPOCHS:-14}
EXTRA=${EXTRA:-}
declare -A ROW_FLAGS=(
  [a]="--decoder-target none"
  [b]="--decoder-target clean"
  [c]="--decoder-target pixelate"
  [d]="--decoder-target blur"
  [e]="--decoder-target none --adv-weight 0.1 --adv-input feature"
  [f]="--decoder-target pixelate --adv-weight 0.1"
  [g]="--decoder-target pixelate --adv-weight 0.1 --inversion-weight 0.3"
  [h]="--decoder-target pixelate --adv-weight 0.1 --inversion-weight 1.0"
)
rows=("$@")
[ ${#rows[@]} -gt 0 ] || rows=(f a c b d e g h)
for row in "${rows[@]}"; do
  out="$RUNS/$row"
  mkdir -p "$out"
  # shellcheck disable=SC2086
  reid-train --data "$DATA" --run-dir "$out" --epochs "$EPOCHS" --resume \
    ${ROW_FLAGS[$row]} --export "$out/encoder.pt" --no-final-eval $EXTRA
  reid-eval --checkpoint "$out/encoder.pt" --data "$DATA" --json "$out/eval.json" \
    --training-checkpoint "$out/last.pt" --grid "$out/grid.png" || echo "evaluation of row $row failed" >&2
done
