#!/usr/bin/env bash
# The seed solution end to end (docs/recipes.md): one cache for both pipelines, every seed recipe, the
# pseudo-label round, a learned blend, submission.csv and the CV table.
#   DATA=/path/to/hms   the Kaggle folder (required)
#   SEED=seed           where everything goes (stores, runs, blend.json, submission.csv)
#   FOLDS=5             patient-grouped folds of the train store
#   DEVICE=auto         auto | cpu | cuda
#   TRAIN_SET="..."     extra `--set key=value` overrides for every training run (the toy chain's tiny
#                       backbones and single steps; empty for the real recipes)
#   RECIPES="..."       the seed recipes to train (default: all five)
set -euo pipefail
: "${DATA:?make seed needs DATA=/path/to/the/kaggle/folder}"
SEED=${SEED:-seed}
BIN=${BIN:-.venv/bin}
FOLDS=${FOLDS:-5}
DEVICE=${DEVICE:-auto}
TRAIN_SET=${TRAIN_SET:-}
RECIPES=${RECIPES:-seed_richard_b0 seed_richard_v2s seed_richard_convnext seed_david_b0 seed_david_mnv3}
STORE="$SEED/specs.zarr"
TEST="$SEED/test.zarr"
RUNS="$SEED/runs"
mkdir -p "$RUNS"

# shellcheck source=scripts/prep_build.sh
source "$(dirname "$0")/prep_build.sh"

echo "== cache: Richard's windows, then David's 50-mel windows beside them (train and test)"
for split in train test; do
  store=$([ "$split" = train ] && echo "$STORE" || echo "$TEST")
  prep_build --data "$DATA" --split "$split" --store "$store" --folds "$FOLDS" --windows 10,30
  prep_build --data "$DATA" --split "$split" --store "$store" --folds "$FOLDS" --windows 10,14,30,44 --n-mels 50
done

train() {  # train RECIPE RUN [extra args]
  local recipe=$1 run=$2; shift 2
  # shellcheck disable=SC2086  # TRAIN_SET is a list of --set options
  "$BIN/hms-train" --config "$recipe" --store "$STORE" --device "$DEVICE" --out "$RUNS/$run" --quiet $TRAIN_SET "$@"
}

echo "== round 1: every seed recipe"
for recipe in $RECIPES; do
  train "$recipe" "$recipe"
done

echo "== round 2: pseudo-labels from the round-1 ensemble's out-of-fold predictions"
round1=()
for recipe in $RECIPES; do round1+=(--runs "$RUNS/$recipe"); done
"$BIN/hms-train" pseudo-label "${round1[@]}" --store "$STORE" --out "$SEED/pseudo.parquet" --min-votes 10
round2=()
for recipe in $RECIPES; do
  case $recipe in
    seed_richard_b0|seed_david_mnv3)  # the seed's pseudo-label runs (Train_V4_Pseudo_Label; David's PL2 runs)
      train "$recipe" "${recipe}_pl" --set "pseudo_labels=\"$SEED/pseudo.parquet\""
      round2+=("$RUNS/${recipe}_pl") ;;
  esac
done

echo "== blend, submission and the CV table"
all=()
for recipe in $RECIPES; do all+=("$RUNS/$recipe"); done
all+=("${round2[@]}")
"$BIN/hms-train" blend "${all[@]}" --out "$SEED/blend.json"
"$BIN/hms-train" predict --store "$TEST" --blend "$SEED/blend.json" --device "$DEVICE" --out "$SEED/submission.csv"
"$BIN/hms-train" compare "${all[@]}" --out "$SEED/compare.png"
echo "done: $SEED/submission.csv (blend weights in $SEED/blend.json, learning curves in $SEED/compare.png)"
