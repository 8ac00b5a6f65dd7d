#!/usr/bin/env bash
# The main job end to end: data (given or synthesized) -> cache -> (once training exists) train -> predict.
set -euo pipefail
DEMO=${DEMO:-demo}
BIN=${BIN:-.venv/bin}
DATA=${DATA:-}
if [ -z "$DATA" ]; then
  DATA="$DEMO/data"
  [ -f "$DATA/train.csv" ] || "$BIN/hms-prep" synth "$DATA" --eegs 120 --seed 0
fi
"$BIN/hms-prep" build --data "$DATA" --windows 10,30 --store "$DEMO/specs.zarr"
"$BIN/hms-prep" build --data "$DATA" --windows 10,30 --split test --store "$DEMO/test.zarr"
"$BIN/hms-prep" info "$DEMO/specs.zarr"
"$BIN/hms-prep" verify "$DEMO/specs.zarr"
