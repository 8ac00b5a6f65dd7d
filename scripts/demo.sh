#!/usr/bin/env bash
# The main job end to end: data (a Kaggle folder, or a synthesized one) -> cache -> train -> submission.
#   DATA=/path/to/kaggle  use real data instead of synthesizing
#   DEMO=demo             where everything goes
set -euo pipefail
DEMO=${DEMO:-demo}
BIN=${BIN:-.venv/bin}
DATA=${DATA:-}
if [ -z "$DATA" ]; then
  DATA="$DEMO/data"
  [ -f "$DATA/train.csv" ] || "$BIN/hms-prep" synth "$DATA" --eegs 120 --seed 0
fi
# shellcheck source=scripts/prep_build.sh
source "$(dirname "$0")/prep_build.sh"
prep_build --data "$DATA" --windows 10,30 --store "$DEMO/specs.zarr"
prep_build --data "$DATA" --windows 10,30 --split test --store "$DEMO/test.zarr"
"$BIN/hms-prep" info "$DEMO/specs.zarr"
"$BIN/hms-prep" verify "$DEMO/specs.zarr"
"$BIN/hms-prep" show "$DEMO/specs.zarr" --row 0 --out "$DEMO/row0.png"
"$BIN/hms-train" --store "$DEMO/specs.zarr" --config smoke --device cpu --out "$DEMO/runs/smoke"
"$BIN/hms-train" predict --store "$DEMO/test.zarr" --run "$DEMO/runs/smoke" --device cpu --out "$DEMO/submission.csv"
echo "done: $DEMO/submission.csv, learning curves in $DEMO/runs/smoke/curves.png, a row in $DEMO/row0.png"
