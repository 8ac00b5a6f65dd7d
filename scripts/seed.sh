#!/usr/bin/env bash
# The seed solution end to end (docs/recipes.md): one cache for both pipelines, every seed recipe, the
# second round (Richard's pseudo-label fine-tuning, David's two pseudo-label rounds, Richard's distilled runs
# from this project's round-1 blend as the teacher), the learned blend beside the seed's own weights,
# submission.csv and the CV table.
#   DATA=/path/to/hms   the Kaggle folder (required)
#   SEED=seed           where everything goes (stores, runs, blend.json, submission.csv)
#   FOLDS=5             patient-grouped folds of the train store
#   DEVICE=auto         auto | cpu | cuda
#   TRAIN_SET="..."     extra `--set key=value` overrides for every training run (the toy chain's tiny
#                       backbones and single steps; empty for the real recipes)
#   RECIPES="..."       the seed recipes to train (default: all five)
#   PUBLIC_RECIPES="..." the public half's recipes (docs/recipes.md, "The seed's public half"; default: all
#                       twelve; empty: none)
#   PUBLIC_TRAIN_SET="..." the `--set` overrides of the public runs (default: TRAIN_SET); PUBLIC_SET_<recipe>
#                       adds a recipe's own (the toy chain's tiny backbones: model settings differ by kind)
set -euo pipefail
: "${DATA:?make seed needs DATA=/path/to/the/kaggle/folder}"
SEED=${SEED:-seed}
BIN=${BIN:-.venv/bin}
FOLDS=${FOLDS:-5}
DEVICE=${DEVICE:-auto}
TRAIN_SET=${TRAIN_SET:-}
RECIPES=${RECIPES:-seed_richard_b0 seed_richard_v2s seed_richard_convnext seed_david_b0 seed_david_mnv3}
PUBLIC_RECIPES=${PUBLIC_RECIPES-public_lb31_b0 public_resnet1d_gru public_fh_k public_fh_e public_fh_r public_fh_ke \
  public_fh_kr public_fh_er public_fh_ker public_timm_b0 public_timm_b1 public_timm_b1_eeg}
# The public recipes' mel variants (docs/recipes.md): features-head E (50 s, hop 33, 300 frames), LB31's 50 s
# (200 mels, 400 frames) and 10 s (300 frames)
PUBLIC_ARRAYS=(--array eeg_mel:window_s=50,hop_length=33,frames=300
               --array eeg_mel:window_s=50,win_length=1024,hop_length=25,n_mels=200,frames=400
               --array eeg_mel:window_s=10,win_length=260,hop_length=6,frames=300)
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
  if [ -n "$PUBLIC_RECIPES" ]; then
    prep_build --data "$DATA" --split "$split" --store "$store" --folds "$FOLDS" --windows 10,30 "${PUBLIC_ARRAYS[@]}"
  fi
done

# The public half's shares of the seed's blend (hms_train/run/blend.py SEED_BLEND.leaf_weights(); the
# LB31 notebook .25, the balance notebook's ResNet1D-GRU .25 x .334, features-head .25 x .333 x (1 - LB) / 1.49,
# timm .25 x .333 / 3); tests/test_public_models.py holds these to blend.py
PUBLIC_PAIRS="public_lb31_b0:.25 public_resnet1d_gru:.0835 public_fh_k:.0106158 public_fh_e:.0117332 \
  public_fh_r:.0106158 public_fh_ke:.0128507 public_fh_kr:.0117332 public_fh_er:.0122919 public_fh_ker:.0134094 \
  public_timm_b0:.02775 public_timm_b1:.02775 public_timm_b1_eeg:.02775"
seed_blend() {  # the seed's own final blend (docs/recipes.md) over the runs that stand for its groups
  local runs=() weights=() run weight
  # David's B0 share is his run without pseudo-labels, E/HMS_David_LB31.ipynb c12: .../efficientb0-wo-pl/1/f{0,2,3}.pt;
  # his MobileNetV3 share the second pseudo-label round (run_commands.py launches cnn-mb-PL2 on folds 0, 2, 3)
  for pair in seed_richard_b0:.025 seed_richard_b0_kd:.025 seed_richard_convnext_kd:.025 \
              seed_richard_v2s_kd:.05 seed_richard_b0_pl:.125 seed_david_b0:.13636 seed_david_mnv3_pl2:.11364 \
              $PUBLIC_PAIRS; do
    run=${pair%%:*} weight=${pair#*:}
    if [ -d "$RUNS/$run" ]; then runs+=("$RUNS/$run"); weights+=("$weight"); fi
  done
  [ ${#runs[@]} -gt 1 ] || return 0
  "$BIN/hms-train" blend "${runs[@]}" --weights "$(IFS=,; echo "${weights[*]}")" --out "$SEED/seed_blend.json"
}

train() {  # train RECIPE RUN [extra args]
  local recipe=$1 run=$2; shift 2
  # shellcheck disable=SC2086  # TRAIN_SET is a list of --set options
  "$BIN/hms-train" --config "$recipe" --store "$STORE" --device "$DEVICE" --out "$RUNS/$run" --quiet $TRAIN_SET "$@"
}

echo "== round 1: every seed recipe"
for recipe in $RECIPES; do
  train "$recipe" "$recipe"
done
has() { [ -d "$RUNS/$1" ]; }  # a run of round 1 (RECIPES may name fewer)

echo "== the public half: the two public notebooks' members (docs/recipes.md)"
public_runs=()
for recipe in $PUBLIC_RECIPES; do
  own="PUBLIC_SET_$recipe"
  # shellcheck disable=SC2086  # lists of --set options
  "$BIN/hms-train" --config "$recipe" --store "$STORE" --device "$DEVICE" --out "$RUNS/$recipe" --quiet \
    ${PUBLIC_TRAIN_SET-$TRAIN_SET} ${!own-}
  public_runs+=("$RUNS/$recipe")
done

echo "== round 2: pseudo-labels, and distillation from the round-1 blend"
round1=() round1_runs=()
for recipe in $RECIPES; do round1+=(--runs "$RUNS/$recipe"); round1_runs+=("$RUNS/$recipe"); done
round2=()
# Richard's V4 fine-tuning: stage 2's low-vote rows (<= 7 votes) on the round-1 ensemble's predictions
"$BIN/hms-train" pseudo-label "${round1[@]}" --store "$STORE" --out "$SEED/pseudo.parquet" --min-votes 10
if has seed_richard_b0; then
  train seed_richard_b0_pl seed_richard_b0_pl --set "pseudo_labels=\"$SEED/pseudo.parquet\""
  round2+=("$RUNS/seed_richard_b0_pl")
fi
# David's PL runs: one 15-epoch stage whose low-vote rows train on the mean of his B0 and MobileNetV3.
# Every row is labelled (his gen_pseudo_label.py --gen-all): a row of his table can take its image from a
# line with >= 10 votes and its target from one with < 10, and needs a label that --min-votes would skip
if has seed_david_b0 && has seed_david_mnv3; then
  from=""  # round 1 learns from his first runs' labels; his second (the PL2 runs) from round 1's runs'
  for round in "" 2; do
    "$BIN/hms-train" pseudo-label --runs "$RUNS/seed_david_b0$from" --runs "$RUNS/seed_david_mnv3$from" \
      --store "$STORE" --out "$SEED/pseudo_david$round.parquet" --all-rows
    for base in seed_david_b0 seed_david_mnv3; do
      train "${base}_pl$round" "${base}_pl$round" --set "pseudo_labels=\"$SEED/pseudo_david$round.parquet\""
      round2+=("$RUNS/${base}_pl$round")
    done
    from=_pl
  done
fi
# Richard's KD runs: the seed's teacher (Data/Kaggle_KD.csv) is not public; the teacher here is this
# project's round-1 blend, its out-of-fold predictions of every row
"$BIN/hms-train" blend "${round1_runs[@]}" --out "$SEED/teacher_blend.json" > /dev/null
"$BIN/hms-train" pseudo-label --blend "$SEED/teacher_blend.json" --store "$STORE" --out "$SEED/teacher.parquet" \
  --all-rows
for base in seed_richard_b0 seed_richard_v2s seed_richard_convnext; do
  if has "$base"; then
    train "${base}_kd" "${base}_kd" --set "teacher_targets=\"$SEED/teacher.parquet\""
    round2+=("$RUNS/${base}_kd")
  fi
done

echo "== blend (learned, and the seed's fixed weights on the same rows), submission and the CV table"
all=("${round1_runs[@]}" "${round2[@]}" "${public_runs[@]}")
"$BIN/hms-train" blend "${all[@]}" --out "$SEED/blend.json"
seed_blend
"$BIN/hms-train" predict --store "$TEST" --blend "$SEED/blend.json" --device "$DEVICE" --out "$SEED/submission.csv"
"$BIN/hms-train" compare "${all[@]}" --out "$SEED/compare.png"
echo "done: $SEED/submission.csv (blend weights in $SEED/blend.json, the seed's own in $SEED/seed_blend.json,"
echo "      learning curves in $SEED/compare.png)"
