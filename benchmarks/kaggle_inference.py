"""What an exported submission costs on Kaggle, measured on CPU here: the test store of N test EEGs built
in process (what infer.py does), then a seed recipe's 5 folds predicting them (`predict_submission`).

The fold weights are random (inference costs the same whatever the weights); the recipe's image, model
and evaluation crops are the real ones (seed_richard_b0: EfficientNet-B0 with the attention head on a
400 x 912 image; seed_david_b0: 400 x 768). Each figure is wall seconds of this process.

Printed: build s, predict s, and both per test EEG; then the hidden test set's time at those rates for
--hidden EEGs (the hidden set's size is not public; the default is an assumption, stated in the output).

Examples:
  python benchmarks/kaggle_inference.py                          # 40 test EEGs, seed_richard_b0, 5 folds
  python benchmarks/kaggle_inference.py --recipe seed_david_b0 --eegs 80 --json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from hms_prep.building.run import BuildConfig, run_build
from hms_prep.kinds import MelParams
from hms_prep.store.arrays import describe_arrays
from hms_prep.store.layout import open_store
from hms_prep.synth.dataset import synthesize
from hms_train.run.checkpoint import predictable, save
from hms_train.run.config import load_config
from hms_train.run.inputs import plan_inputs
from hms_train.run.predict import predict_submission

HIDDEN_EEGS = 3000  # assumption: the hidden test set's size is not public
KAGGLE_LIMIT_H = 9  # a Kaggle code competition notebook's run-time limit, hours
RECIPE_ARRAYS = {  # the test arrays each recipe reads: the mel template and windows (plus the Kaggle crop)
    "seed_richard_b0": (MelParams(window_s=10), (10, 30)),
    "seed_david_b0": (MelParams(window_s=10, n_mels=50), (10, 14, 30, 44)),
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="seed_richard_b0", choices=sorted(RECIPE_ARRAYS))
    parser.add_argument("--eegs", type=int, default=40, help="synthetic test EEGs")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--hidden", type=int, default=HIDDEN_EEGS, help="test EEGs to extrapolate to")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(torch.get_num_threads())  # every core, as on Kaggle
    work = Path(tempfile.mkdtemp(prefix="hms-kaggle-"))
    try:
        result = measure(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    per = result["seconds_per_eeg"]
    print(f"{args.recipe}, {args.folds} folds, {args.eegs} test EEGs on CPU ({torch.get_num_threads()} threads):")
    print(f"  build  {result['build_s']:7.1f} s  {per['build']:.3f} s per EEG")
    print(f"  predict{result['predict_s']:7.1f} s  {per['predict']:.3f} s per EEG")
    hours = result["hidden_hours"]
    print(f"  {args.hidden} test EEGs (an assumption: the hidden set's size is not public): {hours:.2f} h "
          f"of Kaggle's {KAGGLE_LIMIT_H} h limit")
    return 0


def measure(args, work: Path) -> dict:
    data = work / "data"
    synthesize(data, n_eegs=4, seed=1, n_test=args.eegs)
    mel, windows = RECIPE_ARRAYS[args.recipe]
    store = work / "test.zarr"
    started = time.perf_counter()
    summary = run_build(BuildConfig(data_dir=str(data), store=str(store), split="test", windows=windows, mel=mel,
                                    raw=None))
    build_s = time.perf_counter() - started
    assert summary.complete and summary.rows == args.eegs, summary.line()

    config = load_config(args.recipe)
    config = dataclasses.replace(config, store=str(store), model=config.model.without_pretrained_weights(), device="cpu")
    group, _ = open_store(str(store))
    inputs = plan_inputs(config, describe_arrays(group))
    run = work / "run"
    run.mkdir()
    for fold in range(args.folds):
        model = inputs.build_model()
        save(run / f"fold{fold}_best.pt", predictable(inputs.model_spec, model, config), config)
    started = time.perf_counter()
    predict_submission(str(store), [run], work / "submission.csv", device="cpu")
    predict_s = time.perf_counter() - started
    per_eeg = {"build": build_s / args.eegs, "predict": predict_s / args.eegs}
    return {"recipe": args.recipe, "folds": args.folds, "eegs": args.eegs, "threads": torch.get_num_threads(),
            "build_s": build_s, "predict_s": predict_s, "seconds_per_eeg": per_eeg,
            "hidden_eegs": args.hidden, "hidden_hours": args.hidden * sum(per_eeg.values()) / 3600}


if __name__ == "__main__":
    sys.exit(main())
