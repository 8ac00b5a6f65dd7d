"""The bundled recipes: every seed value held against the seed's code (the source of each in a comment;
docs/recipes.md), their images on a store holding both pipelines' arrays, one tiny training step of
each on CPU, and the switches they are made of (loss, schedule, EMA warm-up, stages, pseudo-label
coverage, per-eeg sampling, golden validation, time-only masks, centred padding, pretrained weights)."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from hms_train.image.augment import LEGACY_KEYS, AugmentConfig, Augmenter
from hms_train.run.config import TrainConfig, bundled_configs, load_config
from hms_train.run.config_values import ConfigError
from hms_train.run.inputs import plan_inputs
from hms_train.run.stages import fold_stages
from hms_train.run.targets import train_targets
from hms_train.image.layout import LayoutConfig, PartSource, resolve_layout
from hms_train.model.losses import Loss
from hms_train.run.metric import VOTE_COLUMNS, kaggle_kl, selection_kl
from hms_train.data.reader import Selection, StoreReader
from hms_train.data.sampler import most_voted_row_per_group, one_row_per_group
from hms_train.run.schedule import describe_rates, make_scheduler
from hms_train.run.train import train
from hms_prep.store.labels import live_rows

SEEDS = ["seed_richard_b0", "seed_richard_v2s", "seed_richard_convnext", "seed_david_b0", "seed_david_mnv3"]

# R/ = Richard_src/Easy_2D_CLS_REG_Pipeline-main/, V4 = R/Train_V4_Pseudo_Label.ipynb (cN: cell N, markdown counted),
# D/ = David_src/ (RichardLiu083/Kaggle-HMS-Harmful-Brain-Activity-Classification @ 2223b40).
RICHARD = {
    "rows": "richard",  # toolbox.ipynb c7 first line per eeg_id; V4 c11 drop_duplicates(spectrogram_id)
    "backbone": "tf_efficientnet_b0_ns",  # V4 c9 'model_name'
    "pretrained": True,  # V4 c1 pretrained=True
    "pool": "attention",  # V4 c1 WidthAttention
    "drop_rate": 0.3,  # V4 c9 'drop_out'
    "dropout_at": "map",  # V4 c1: timm's forward_head dropout with global_pool = Identity, before WidthAttention
    "drop_path_rate": 0.2,  # V4 c9 'drop_path'
    "optimizer": "adamw", "lr": 3e-4, "weight_decay": 0.0,  # V4 c9, c14
    "schedule": "constant", "warmup_epochs": 0.0,  # V4 c14: no scheduler
    "batch_size": 16,  # V4 c9
    "ema_decay": 0.995, "ema_warmup": False,  # V4 c14 ModelEmaV3(decay=CFG['EMA'])
    "kl_reduction": "mean", "kl_weight": 1.0, "mse_weight": 1.0, "ce_weight": 0.0,  # V4 c4
    "epochs": 25, "stage2_epochs": 15, "stage2_lr": 3e-4,  # V4 c9; round 1's stage 2: V3 c9 CFG['epoch']= 15
    "stage2_init": "best",  # V3/V4 c9 load_model cv{fold}_best.pth
    "stage2_min_votes": 8, "stage2_val_min_votes": 8,  # V3/V4 c11 voter > 7
    "stage2_rows": "richard_finetune", "stage2_val_to_train_below": None,  # V3 c11: filter, then drop_duplicates
    "pseudo_mode": "replace",  # V4 c3 label*0. + pl_label*1.0
    "select_min_votes": 0,  # V4 c14 KL over all validation rows
    "sample_per_eeg": False, "val_per_eeg": False,
    "seed": 123,  # V4 c0
}
def flat(augment: AugmentConfig) -> dict:
    """The augmentations' settings under the flat names the seed's values are listed by here."""
    return {key: getattr(augment.steps[step], setting) for key, (step, setting) in LEGACY_KEYS.items()}


RICHARD_AUGMENT = {  # V4 c2, c3
    "brightness_contrast_p": 0.5, "brightness": 0.6, "contrast": 0.0,
    "hflip_p": 0.5, "vflip_p": 0.5, "hemisphere_swap_p": 0.0,
    "xy_mask_p": 0.5, "mask_axes": "time", "mask_stripes": (1, 10), "mask_width": (5, 10),
    "ssr_p": 0.7, "shift": 0.15, "scale": 0.05, "rotate_deg": 15.0,
    "mixup_p": 0.0, "mixup_alpha": 0.5,  # c3 mixes only images <= 656 wide; his are 812
}
DAVID = {
    "rows": "david",  # D/data_loader.py:340-385 pick_max_vote, one row per spectrogram
    "backbone": "efficientnet_b0",  # D/model.py models.efficientnet_b0
    "pretrained": True,  # D/model.py weights='IMAGENET1K_V1'
    "pool": "avg", "drop_rate": 0.1, "dropout_at": "pooled",  # D/model.py:102-105 AdaptiveAvgPool, Dropout(0.1)
    "drop_path_rate": 0.2, "conv_head": True,  # D/model.py:67 torchvision efficientnet_b0: stochastic depth 0.2
    "optimizer": "lion", "lr": 2e-4, "weight_decay": 1e-3,  # train-mlflow.py Lion(lr=args.lr / 5)
    "weight_decay_all": True,  # train-mlflow.py:161-162 Lion(model.parameters())
    "schedule_across_stages": True,  # train-mlflow.py:168, 201-220 one Trainer, T_max = 15
    "schedule": "cosine", "schedule_unit": "epoch", "warmup_epochs": 0.0, "lr_min_factor": 0.0,  # CosineAnnealingLR
    "batch_size": 32,  # train-mlflow.py
    "ema_decay": 0.99, "ema_warmup": True,  # D/trainer.py EMA(beta=0.99)
    "ema_update_after_step": 50, "ema_update_every": 3,  # D/trainer.py:36
    "grad_clip": 10.0, "grad_clip_scaled": True,  # D/trainer.py: clip_grad_norm_(max_norm=10.0) before unscale_
    "net_form": "seed_exact",  # D/model.py: random 17x17 stride-2 stem, torchvision BatchNorm, bias-free fc
    "eval_flip_p": 0.5,  # D/data_loader.py:388: every dataset flips, validation and pseudo-labelling too
    "kl_reduction": "mean", "kl_weight": 2.0, "ce_weight": 2.0, "mse_weight": 0.0,  # D/trainer.py ce*2 + kl*2
    "epochs": 3, "stage2_epochs": 12, "stage2_min_votes": 10,  # train-mlflow.py two-stage, data_loader.py
    "stage2_init": "continue", "select_min_votes": 10,
    "sample_per_eeg": False, "val_per_eeg": False,
    "seed": 10260,  # D/script/run_commands.py
}
DAVID_AUGMENT = {  # D/data_loader.py, D/utils.py
    "hflip_p": 0.5, "vflip_p": 0.0, "hemisphere_swap_p": 0.0, "xy_mask_p": 0.0, "ssr_p": 0.0,
    "mixup_p": 0.3, "mixup_alpha": 0.5, "brightness_contrast_p": 0.0,  # his contrast: augment.autocontrast
}
EXPECTED = {
    "seed_richard_b0": (RICHARD, RICHARD_AUGMENT),
    # README.md names V2-S and ConvNeXt-Base; the repo names no weights (our tags)
    "seed_richard_v2s": ({**RICHARD, "backbone": "tf_efficientnetv2_s.in21k_ft_in1k"}, RICHARD_AUGMENT),
    # R/Valid.ipynb c1: a plain wrapper, no width attention
    "seed_richard_convnext": ({**RICHARD, "backbone": "convnext_base.fb_in22k_ft_in1k", "pool": "avg",
                               "dropout_at": "pooled"}, RICHARD_AUGMENT),  # timm ConvNeXt's head: pool, norm, drop, fc
    "seed_david_b0": (DAVID, DAVID_AUGMENT),
    # D/model.py:85-87 mobilenet_v3_large .features (960 channels, no stochastic depth); run_pseudo_pipeline.py 'use-mean'
    "seed_david_mnv3": ({**DAVID, "backbone": "mobilenetv3_large_100", "conv_head": False, "drop_path_rate": 0.0,
                         "pseudo_mode": "replace"}, DAVID_AUGMENT),  # 'use-mean' made the file, it replaces
    # R/Train_V4_Pseudo_Label.ipynb c9 CFG['epoch']= 20; c11 voter < 7 -> fold -1, then drop_duplicates
    "seed_richard_b0_pl": ({**RICHARD, "stage2_epochs": 20, "stage2_rows": "richard",
                            "stage2_val_to_train_below": 7, "pseudo_labels": "pseudo.parquet"}, RICHARD_AUGMENT),
    "top": ({**RICHARD, "rows": "all", "sample_per_eeg": True, "val_per_eeg": True, "select_min_votes": 10,
             "stage2_val_to_train_below": 0, "stage2_rows": "all", "stage2_epochs": 20}, RICHARD_AUGMENT),
}
TINY = ["model.pretrained=false", 'model.backbone="mobilenetv3_small_050"', "epochs=1", "stage2_epochs=1", "folds=[0]",
        "max_batches_per_epoch=1", "batch_size=4", 'device="cpu"', "reader_threads=2"]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_bundled_recipes_hold_the_seed_values(name):
    values, augment = EXPECTED[name]
    config = load_config(name)
    model = config.model.kwargs()  # the [model] table's settings, the others fields of their own
    assert {key: model[key] if key in model else getattr(config, key) for key in values} == values
    assert {key: flat(config.augment)[key] for key in augment} == augment
    # D/utils.py: RandomApply(p=0.5) of v2.RandomAutocontrast() (p 0.5), per chain sub-image
    assert config.augment.steps["autocontrast"].p == (0.25 if name.startswith("seed_david") else 0.0)


def test_old_names_extend_the_new_recipes():
    assert load_config("seed_effnet_b0") == load_config("seed_richard_b0")
    assert load_config("seed_lion_mobilenet") == load_config("seed_david_mnv3")
    assert set(SEEDS) | {"top", "raw1d", "multimodal", "smoke"} <= set(bundled_configs())


def test_extends_merges_tables_and_refuses_loops(tmp_path):
    child = tmp_path / "child.toml"
    child.write_text('extends = "seed_richard_b0"\nlr = 1e-3\n[augment.vertical_flip]\np = 0.0\n')
    config = load_config(str(child))
    steps = config.augment.steps
    assert config.lr == 1e-3 and steps["vertical_flip"].p == 0 and steps["xy_mask"].axes == "time"
    loop = tmp_path / "loop.toml"
    loop.write_text(f'extends = "{loop}"\n')
    with pytest.raises(ConfigError, match="extends itself"):
        load_config(str(loop))


# --- both pipelines on one store ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def both_store(train_store, synth_data, tmp_path_factory):
    """`hms-prep build --windows 10,30` (a copy of conftest's train_store, built so), then
    `--windows 10,14,30,44 --n-mels 50` on the same store."""
    import shutil

    from hms_prep.building.run import BuildConfig, run_build
    from hms_prep.kinds import MelParams

    url = str(tmp_path_factory.mktemp("both") / "specs.zarr")
    shutil.copytree(train_store, url)
    run_build(BuildConfig(data_dir=str(synth_data), store=url, windows=(10, 14, 30, 44),
                          mel=MelParams(window_s=10, n_mels=50), chunk_rows=8, workers=2))
    return url


@pytest.mark.parametrize("name, size", [("seed_richard_b0", (400, 912)), ("seed_richard_v2s", (400, 912)),
                                        ("seed_richard_convnext", (400, 912)), ("top", (400, 912)),
                                        ("seed_david_b0", (400, 768)), ("seed_david_mnv3", (400, 768)),
                                        # the distilled V2-S and ConvNeXt (their B0 trains in the toy chain)
                                        ("seed_richard_v2s_kd", (400, 912)), ("seed_richard_convnext_kd", (400, 912))])
def test_recipe_images_on_one_store(name, size, both_store):
    config = load_config(name, [f'store="{both_store}"'])
    reader = StoreReader(both_store, config.inputs)
    layout = plan_inputs(config, reader.descriptions).layout
    assert layout.image_size == size
    kwargs = plan_inputs(config, reader.descriptions).model_spec["kwargs"]  # the model options reach the model
    assert {key: kwargs[key] for key in config.model.kwargs()} == config.model.kwargs()
    if size[1] == 912:  # the label's 600 s Kaggle crop: 812 columns, centred in 912 and one window
        assert layout.composed_width == 812 and layout.pad_left == 50 and layout.window_starts() == [0]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["top"])  # the seed recipes train end to end in tests/test_seed_chain.py
def test_each_recipe_trains_one_tiny_step(name, both_store, tmp_path):
    summary = train(load_config(name, [f'store="{both_store}"', *TINY]), tmp_path / name, quiet=True)
    assert np.isfinite(summary["kl"]) and (tmp_path / name / "fold0_best.pt").is_file()


def uniform_pseudo_labels(reader: StoreReader, rows: np.ndarray, path) -> None:
    labels = reader.column("label_id")[rows]
    pq.write_table(pa.table({"label_id": labels, **{c: np.full(len(rows), 1 / 6) for c in VOTE_COLUMNS}}), path)


@pytest.mark.slow
def test_richards_stage2_with_pseudo_labels_starts_from_the_best_stage1_weights(both_store, tmp_path):
    config = load_config("seed_richard_b0_pl", [f'store="{both_store}"', *TINY])
    reader = StoreReader(both_store, config.inputs)
    everything = reader.select(Selection())
    uniform_pseudo_labels(reader, everything[reader.votes[everything] < 8], tmp_path / "pl.parquet")
    config = load_config("seed_richard_b0_pl", [f'store="{both_store}"', *TINY, f'pseudo_labels="{tmp_path / "pl.parquet"}"'])
    out = tmp_path / "run"
    train(config, out, quiet=True)
    stage1 = torch.load(out / "fold0_stage1_best.pt", weights_only=True)
    best = torch.load(out / "fold0_best.pt", weights_only=True)
    assert stage1["stage"] == "stage1" and best["stage"] == "stage2", "the fold's model is stage 2's best"


@pytest.mark.slow
def test_stage2_starts_from_the_best_stage1_epoch_not_the_last(both_store, tmp_path):
    """Stage 1 over 4 epochs whose best is not its last (checked: the test's premise), then stage 2 with a
    learning rate too small to move a float32 weight: stage 2's weights are stage 1's best epoch's, which
    the epochs after it changed. Starting from the last epoch's weights fails this test."""
    overrides = [f'store="{both_store}"', *TINY, "epochs=4", "stage2_epochs=1", "lr=3e-2", "stage2_lr=1e-12",
                 "ema_decay=0", 'schedule="constant"', "max_batches_per_epoch=2", 'stage2_init="best"',
                 'rows="all"']
    out = tmp_path / "run"
    train(load_config("seed_richard_b0", overrides), out, quiet=True)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    stage1 = [r for r in records if r["stage"] == "stage1"]
    best = min(stage1, key=lambda r: r["val_kl_select"])
    assert len(stage1) == 4 and best["epoch"] < 4, ("premise: stage 1's best epoch is not its last", stage1)
    kept = torch.load(out / "fold0_stage1_best.pt", weights_only=True)
    final = torch.load(out / "fold0_best.pt", weights_only=True)
    assert kept["stage"] == "stage1" and kept["score"] == pytest.approx(best["val_kl_select"])
    assert final["stage"] == "stage2"
    weights = [k for k, v in kept["model"].items() if v.is_floating_point() and "running_" not in k]
    moved = max((final["model"][k] - kept["model"][k]).abs().max().item() for k in weights)
    assert weights and moved < 1e-9, moved  # started from the last epoch instead: 0.17 (checked)


@pytest.mark.slow
def test_fold_model_last_keeps_the_last_epoch_as_keras_save_weights_did(both_store, tmp_path):
    """fold_model = "last" (E/HMS_LB31.ipynb cell 18: model.fit, then save_weights: the last epoch): the
    fold's model is the last epoch's even when an earlier one validated better (the premise, as in the
    test above: same run)."""
    overrides = [f'store="{both_store}"', *TINY, "epochs=4", "stage2_epochs=0", "lr=3e-2", "ema_decay=0",
                 'schedule="constant"', "max_batches_per_epoch=2", 'rows="all"', 'fold_model="last"']
    out = tmp_path / "run"
    train(load_config("seed_richard_b0", overrides), out, quiet=True)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert min(records, key=lambda r: r["val_kl_select"])["epoch"] < 4, ("premise: the best epoch is not the last", records)
    final = torch.load(out / "fold0_best.pt", weights_only=True)
    assert final["score"] == pytest.approx(records[-1]["val_kl_select"]) and records[-1]["epoch"] == 4


def test_richards_stage_rows(both_store):
    """His vote rules, on every label row (rows = "all")."""
    config = load_config("seed_richard_b0_pl", [f'store="{both_store}"', 'pseudo_labels="pl.parquet"', 'rows="all"',
                                                'stage2_rows="all"'])
    reader = StoreReader(both_store, config.inputs)
    votes, fold = reader.votes, reader.column("fold")
    stage1, stage2 = fold_stages(config, reader, 0, reader.targets)
    fold_rows = reader.select(Selection(folds=[0]))
    others = reader.select(Selection(exclude_folds=[0]))
    assert np.array_equal(stage1.rows, others) and np.array_equal(stage1.val_rows, fold_rows)
    moved = fold_rows[votes[fold_rows] < 7]
    assert len(moved) and np.array_equal(stage2.rows, np.union1d(others, moved))  # pseudo-labels: all rows
    assert np.array_equal(stage2.val_rows, fold_rows[votes[fold_rows] > 7])  # 7-vote rows are used nowhere
    assert stage2.init == "best" and set(fold[stage2.rows]) >= {0, 1}
    plain = load_config("seed_richard_b0", [f'store="{both_store}"', 'rows="all"', 'stage2_rows="all"'])
    _, without = fold_stages(plain, reader, 0, reader.targets)
    assert np.array_equal(without.rows, others[votes[others] > 7]), "no pseudo-labels: > 7 votes only"


def test_richards_stages_draw_from_his_tables(both_store):
    """Stage 1 on his one row per spectrogram (toolbox c7, V4 c11); stage 2's table drops the validation
    fold's 7-vote rows before drop_duplicates (V4 c11), so a spectrogram can keep another eeg_id's row."""
    from hms_train.data.tables import richard_rows

    config = load_config("seed_richard_b0_pl", [f'store="{both_store}"', 'pseudo_labels="pl.parquet"'])
    reader = StoreReader(both_store, config.inputs)
    votes, fold = reader.votes, reader.column("fold")
    stage1, stage2 = fold_stages(config, reader, 0, reader.targets)
    table = richard_rows(reader.labels).rows
    assert np.array_equal(stage1.rows, table[fold[table] != 0]) and np.array_equal(stage1.val_rows, table[fold[table] == 0])
    eligible = ~((fold == 0) & (votes == 7))
    table2 = richard_rows(reader.labels, eligible).rows
    moved = table2[(fold[table2] == 0) & (votes[table2] < 7)]
    assert len(moved) and np.array_equal(stage2.rows, np.union1d(table2[fold[table2] != 0], moved))
    assert np.array_equal(stage2.val_rows, table2[(fold[table2] == 0) & (votes[table2] > 7)])
    assert len(stage1.rows) < len(reader.select(Selection(exclude_folds=[0])))  # a table, not every row


def seed_train_npy(reader: StoreReader) -> pd.DataFrame:
    """Richard_src/toolbox.ipynb cell 7 ("Make Train_eeg csv", his ../Data/train_npy.csv) on the store's
    train.csv lines, transcribed; `row` is the store row of the line it keeps:

        for i,_id in enumerate(tqdm(df['eeg_id'].unique().tolist())):
            temp_df= df[df['eeg_id']==_id].reset_index(drop=True)
            soft_label= temp_df.loc[0, temp_df.columns[-8:-2] ].values
            voter= soft_label.sum()
            spec_id= temp_df.loc[0,'spectrogram_id']
    """
    labels = reader.labels
    df = pd.DataFrame({"row": labels.column("row").to_numpy(), "source_index": labels.column("source_index").to_numpy(),
                       "eeg_id": reader.column("eeg_id"), "spectrogram_id": reader.column("spectrogram_id"),
                       "voter": reader.votes, "fold": reader.column("fold")})
    df = df[live_rows(labels)].sort_values("source_index")  # Data/train.csv in its own order
    rows = []
    for _id in df["eeg_id"].unique().tolist():
        temp_df = df[df["eeg_id"] == _id].reset_index(drop=True)
        rows.append(temp_df.loc[0, ["row", "spectrogram_id", "voter", "fold"]])
    return pd.DataFrame(rows).reset_index(drop=True)


def split_rows(df: pd.DataFrame, fold: int, built: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """His cells' last lines, `train_df= df[df['fold']!=CFG['fold']]`, `valid_df= df[df['fold']==CFG['fold']]`,
    as sorted store rows (those that built: a failed row is nobody's)."""
    train_rows = np.intersect1d(df[df["fold"] != fold]["row"].to_numpy(np.int64), built)
    valid_rows = np.intersect1d(df[df["fold"] == fold]["row"].to_numpy(np.int64), built)
    return train_rows, valid_rows


def test_richards_stage2_tables_are_his_v3_and_v4_cells(both_store):
    """Round 1's stage 2 (seed_richard_b0, no pseudo-labels) against R/Train_V3_Attention_Module.ipynb c11,
    the pseudo-label fine-tuning (seed_richard_b0_pl) against R/Train_V4_Pseudo_Label.ipynb c11, each cell
    run on his per-eeg table (toolbox c7) for every fold; and their epochs (V3 c9: 15, V4 c9: 20)."""
    v3 = load_config("seed_richard_b0", [f'store="{both_store}"'])
    v4 = load_config("seed_richard_b0_pl", [f'store="{both_store}"'])
    reader = StoreReader(both_store, v3.inputs)
    built = reader.select(Selection())
    train_npy = seed_train_npy(reader)
    n_folds = int(reader.column("fold").max()) + 1
    lost_by_filtering_after = 0
    for fold in range(n_folds):
        # V3 c11
        df = train_npy.copy()
        df = df[df['voter'] > 7]  # if CFG['finetune']: df= df[df['voter']>7]
        df = df.drop_duplicates(subset=['spectrogram_id'])  # df= df.drop_duplicates(subset=['spectrogram_id'])
        train_rows, valid_rows = split_rows(df, fold, built)
        _, stage2 = fold_stages(v3, reader, fold, reader.targets)
        assert (stage2.epochs, stage2.init) == (15, "best")  # V3 c9: CFG['epoch']= 15, load_model cv{fold}_best
        assert np.array_equal(stage2.rows, train_rows) and np.array_equal(stage2.val_rows, valid_rows), fold
        after = train_npy.drop_duplicates(subset=['spectrogram_id'])  # the order this project had before
        lost_by_filtering_after += len(set(valid_rows) - set(after[after['voter'] > 7]['row']))
        # V4 c11
        df = train_npy.copy()
        df.loc[(df['voter'] < 7) & (df['fold'] == fold), 'fold'] = -1
        df = df[(df['voter'] > 7) | (df['fold'] != fold)]
        df = df.drop_duplicates(subset=['spectrogram_id'])
        train_rows, valid_rows = split_rows(df, fold, built)
        _, stage2 = fold_stages(v4, reader, fold, reader.targets)
        assert stage2.epochs == 20  # V4 c9: CFG['epoch']= 20
        assert np.array_equal(stage2.rows, train_rows) and np.array_equal(stage2.val_rows, valid_rows), fold
    assert lost_by_filtering_after > 0, "premise: the store has spectrograms whose first eeg_id has <= 7 votes"


@pytest.mark.parametrize("mode, weight", [("blend", 0.25), ("blend", 0.5), ("replace", 1.0)])
def test_pseudo_mode_sets_the_low_vote_targets_by_value(both_store, tmp_path, mode, weight):
    """pseudo_mode="blend": a low-vote row's target is pseudo_blend x its pseudo-label + the rest x its own
    votes; "replace": the pseudo-label alone; rows with enough votes keep their own targets."""
    path = tmp_path / "pl.parquet"
    config = load_config("seed_david_mnv3", [f'store="{both_store}"', f'pseudo_labels="{path}"', 'rows="all"',
                                             f'pseudo_mode="{mode}"', f"pseudo_blend={weight if mode == 'blend' else 0.5}"])
    reader = StoreReader(both_store, config.inputs)
    rows = reader.select(Selection())
    pseudo = np.zeros((len(rows), 6))
    pseudo[np.arange(len(rows)), np.arange(len(rows)) % 6] = 1.0  # a one-hot pseudo-label, unlike any vote
    pq.write_table(pa.table({"label_id": reader.column("label_id")[rows],
                             **{c: pseudo[:, j] for j, c in enumerate(VOTE_COLUMNS)}}), path)
    targets = train_targets(reader, config)
    low = reader.votes[rows] < config.stage2_min_votes
    assert low.any() and (~low).any()
    own = reader.targets[rows]
    np.testing.assert_allclose(targets[rows[low]], weight * pseudo[low] + (1 - weight) * own[low], atol=1e-6)
    np.testing.assert_array_equal(targets[rows[~low]], own[~low])


def test_pseudo_labels_must_cover_every_low_vote_training_row(both_store, tmp_path):
    path = tmp_path / "pl.parquet"
    # V4's rule (the _pl recipe) trains its stage 2 on pseudo-labels; round 1 (V3) has none
    config = load_config("seed_richard_b0_pl", [f'store="{both_store}"', f'pseudo_labels="{path}"', 'rows="all"',
                                                'stage2_rows="all"'])
    reader = StoreReader(both_store, config.inputs)
    low = reader.select(Selection())
    low = low[reader.votes[low] < 8]
    uniform_pseudo_labels(reader, low[3:], path)
    first = [int(label) for label in reader.column("label_id")[low[:3]]]
    with pytest.raises(ValueError, match=rf"no pseudo-label for 3 of the {len(low)} rows .*first label_ids: {re.escape(str(first))}"):
        train_targets(reader, config, low)
    uniform_pseudo_labels(reader, low, path)
    targets = train_targets(reader, config, low)
    np.testing.assert_allclose(targets[low], 1 / 6)
    high = np.setdiff1d(reader.select(Selection()), low)
    np.testing.assert_array_equal(targets[high], reader.targets[high])
    uniform_pseudo_labels(reader, low[:-1], path)
    with pytest.raises(ValueError, match="no pseudo-label for 1 of"):  # train checks it before any work
        train(config, tmp_path / "run", quiet=True)
    assert not (tmp_path / "run").exists()


def test_top_validates_on_each_eegs_most_voted_row(both_store):
    config = load_config("top", [f'store="{both_store}"'])
    reader = StoreReader(both_store, config.inputs)
    stage1, _ = fold_stages(config, reader, 0, reader.targets)
    eeg = reader.column("eeg_id")
    fold_rows = reader.select(Selection(folds=[0]))
    assert sorted(eeg[stage1.val_rows]) == sorted(set(eeg[fold_rows]))
    for row in stage1.val_rows:
        same = fold_rows[eeg[fold_rows] == eeg[row]]
        assert reader.votes[row] == reader.votes[same].max() and row == same[reader.votes[same].argmax()]


# --- the switches ---------------------------------------------------------------------------------------------


def test_loss_reductions_and_terms_match_torch():
    generator = torch.Generator().manual_seed(0)
    logits, targets = torch.randn(5, 6, generator=generator), torch.randn(5, 6, generator=generator).softmax(1)
    log_probs = logits.log_softmax(1)
    kl_mean = torch.nn.KLDivLoss()(log_probs, targets)  # the seed's: reduction "mean"
    kl_batchmean = torch.nn.KLDivLoss(reduction="batchmean")(log_probs, targets)
    mse = torch.nn.MSELoss()(logits.softmax(1), targets)
    ce = torch.nn.CrossEntropyLoss()(logits, targets)
    torch.testing.assert_close(Loss()(logits, targets), kl_batchmean)
    torch.testing.assert_close(Loss("mean", mse_weight=1.0)(logits, targets), kl_mean + mse)  # Richard
    torch.testing.assert_close(Loss("mean", kl_weight=2.0, ce_weight=2.0)(logits, targets), 2 * ce + 2 * kl_mean)  # David
    with pytest.raises(ValueError, match="unknown kl_reduction 'sum'"):
        Loss("sum")


def lrs(config: TrainConfig, epochs: int, steps: int) -> list[float]:
    """The lr of every step of a stage, stepping the scheduler as run_stage does."""
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=config.lr)
    scheduler = make_scheduler(config, optimizer, config.lr, epochs, steps)
    seen, step = [], 0
    for epoch in range(epochs):
        for _ in range(steps):
            seen.append(optimizer.param_groups[0]["lr"])
            step += 1
            scheduler.step_update(step)
        scheduler.step(epoch + 1)
    return seen


def test_constant_and_per_epoch_cosine_schedules():
    assert lrs(load_config("seed_richard_b0"), 3, 4) == [3e-4] * 12
    david = load_config("seed_david_b0")
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=david.lr)
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=5)  # David's, stepped per epoch
    expected = []
    for _ in range(5):
        expected += [optimizer.param_groups[0]["lr"]] * 3
        cosine.step()
    np.testing.assert_allclose(lrs(david, 5, 3), expected, rtol=1e-6)
    steps = lrs(load_config("smoke", ["warmup_epochs=0"]), 2, 4)  # the default: per step
    assert len(set(steps)) == len(steps)


@pytest.mark.slow
class SteppedRates:
    """The lr of every optimizer step a training run takes, read as the step runs (torch's global optimizer
    step pre-hook): what the loop trained at, not what a plan or a log says it should have."""

    def __enter__(self):
        self.lrs = []
        from torch.optim.optimizer import register_optimizer_step_pre_hook

        self.handle = register_optimizer_step_pre_hook(
            lambda optimizer, args, kwargs: self.lrs.append(optimizer.param_groups[0]["lr"]))
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def test_a_real_run_steps_the_per_epoch_cosine_as_torchs_cosine_annealing(both_store, tmp_path):
    """The lr of each step the loop took (one per epoch here) and the lr it leaves after each epoch
    (metrics.jsonl): David's CosineAnnealingLR(T_max=epochs), stepped once per epoch, after its steps (a
    schedule stepped at the start of each epoch trains every epoch at the next one's lr)."""
    config = load_config("seed_david_b0", [f'store="{both_store}"', *TINY, "epochs=3", "stage2_epochs=0"])
    with SteppedRates() as stepped:
        train(config, tmp_path / "run", quiet=True)
    seen = [json.loads(line)["lr"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=config.lr)
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=3)
    expected, trained_at = [], []
    for _ in range(3):
        trained_at.append(optimizer.param_groups[0]["lr"])
        optimizer.step()  # no gradient: nothing moves, but torch sees the usual order
        cosine.step()
        expected.append(optimizer.param_groups[0]["lr"])
    np.testing.assert_allclose(stepped.lrs, trained_at, rtol=1e-6)
    np.testing.assert_allclose(seen, expected, rtol=1e-6)
    assert len(set(seen)) == 3


def test_ema_warm_up_follows_the_step():
    from timm.utils import ModelEmaV3

    ema = ModelEmaV3(torch.nn.Linear(2, 2), decay=0.99, use_warmup=True)
    assert ema.get_decay(2) == pytest.approx(1 - 2 ** (-2 / 3)) and ema.get_decay(10_000) == 0.99


def test_selection_uses_the_golden_rows_or_all():
    targets = np.eye(6)[[0, 1, 2]]
    predictions = np.full((3, 6), 1 / 6)
    predictions[2] = targets[2] * 0.9 + 0.1 / 6
    votes = np.array([3, 12, 15])
    assert selection_kl(targets, predictions, votes, 10) == pytest.approx(kaggle_kl(targets[1:], predictions[1:]))
    assert selection_kl(targets, predictions, votes, 0) == pytest.approx(kaggle_kl(targets, predictions))
    assert selection_kl(targets, predictions, votes, 99) == pytest.approx(kaggle_kl(targets, predictions))


def test_one_random_row_per_eeg_changes_with_the_epoch_and_repeats_with_it():
    rows = np.arange(20)
    groups = np.repeat([5, 9, 7, 1], 5)
    votes = np.tile([3, 8, 8, 1, 2], 4).astype(np.float32)
    picks = [one_row_per_group(rows, groups, np.random.default_rng([0, 0, 0, epoch])) for epoch in range(6)]
    assert all(sorted(groups[p]) == [1, 5, 7, 9] for p in picks)
    assert len({tuple(p) for p in picks}) > 1
    np.testing.assert_array_equal(picks[2], one_row_per_group(rows, groups, np.random.default_rng([0, 0, 0, 2])))
    np.testing.assert_array_equal(most_voted_row_per_group(rows, groups, votes), [1, 6, 11, 16])


@pytest.mark.slow
def test_per_eeg_epochs_train_and_validate_on_one_row_per_eeg(both_store, tmp_path):
    config = load_config("top", [f'store="{both_store}"', *TINY])
    summary = train(config, tmp_path / "top", quiet=True)
    reader = StoreReader(both_store, config.inputs)
    records = [json.loads(line) for line in (tmp_path / "top" / "metrics.jsonl").read_text().splitlines()]
    fold_eegs = set(reader.column("eeg_id")[reader.select(Selection(folds=[0]))])
    assert np.isfinite(summary["kl"]) and records[0]["val_rows"] == len(fold_eegs)
    oof = pq.read_table(tmp_path / "top" / "oof.parquet")
    assert oof.num_rows == len(reader.select(Selection(folds=[0]))), "out-of-fold predictions: every row of the fold"


def test_time_masks_leave_every_row_unmasked_somewhere():
    config = AugmentConfig.from_values({**AugmentConfig.off().to_dict(), "xy_mask": {"p": 1.0, "axes": "time"}})
    images = torch.ones(8, 1, 40, 200)
    masked, _ = Augmenter(config, torch.Generator().manual_seed(0))(images, torch.ones(8, 6) / 6)
    zero_columns = (masked == 0).all(dim=2)  # (B, 1, W): whole columns
    assert bool(((masked == 0) == zero_columns[:, :, None, :]).all()), "only whole time columns are masked"
    assert bool(zero_columns.any(dim=-1).all())


def test_centred_padding_splits_the_zeros_like_pad_if_needed():
    sources = {"a": PartSource.image_part((4, 2, 5))}
    layout = resolve_layout(LayoutConfig.parse({"parts": [{"array": "a"}], "width": 10, "pad": "center"}), sources)
    assert layout.pad_left == 2  # albumentations: left = (10 - 5) // 2, right gets the rest
    from hms_train.image.compose import compose

    parts = {"a": torch.arange(1, 41, dtype=torch.float32).reshape(1, 4, 2, 5)}
    image = compose(layout, parts, train=False)
    assert image.shape == (1, 1, 8, 10)
    assert bool((image[..., :2] == 0).all()) and bool((image[..., 7:] == 0).all())
    assert torch.equal(image[0, 0, :, 2:7], parts["a"].reshape(8, 5))


def test_pretrained_weights_offline_fail_fast_saying_how_to_provide_them(tmp_path):
    import subprocess
    import sys
    import textwrap

    from conftest import ROOT

    script = textwrap.dedent("""
        import hms_train.model  # noqa: F401 (registers the model kinds)
        from hms_train.model.backbones import MissingWeightsError, hub_reachable
        from hms_train.model.kinds import create_model
        assert not hub_reachable(), "this check expects a machine without a network"
        try:
            create_model("2d", backbone="tf_efficientnet_b0_ns", pretrained=True, image_size=(64, 64))
        except MissingWeightsError as error:
            print(error)
        """)
    env = {"HF_HOME": str(tmp_path / "hf"), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", script], env=env, cwd=ROOT, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    message = result.stdout
    assert "no pretrained weights for tf_efficientnet_b0_ns" in message and "--weights PATH" in message
    assert str(tmp_path / "hf" / "hub") in message and "HF_HOME" in message


def test_layout_choices_are_checked():
    with pytest.raises(ValueError, match=r"layout.pad = 'left'; allowed: \['right', 'center'\]"):
        LayoutConfig.parse({"parts": [{"array": "a"}], "width": 10, "pad": "left"})
    with pytest.raises(ConfigError, match="augment.xy_mask.axes: 'freq' is not allowed"):
        load_config("smoke", ['augment.xy_mask.axes="freq"'])
    with pytest.raises(ConfigError, match="stage2_val_to_train_below: 12 is above stage2_min_votes 8"):
        load_config("seed_richard_b0", ["stage2_val_to_train_below=12"])
    assert math.isclose(load_config("seed_richard_b0").stage2_lr, 3e-4)


@pytest.mark.slow
@pytest.mark.parametrize("name", SEEDS)
def test_each_recipes_own_backbone_builds_at_its_image_size(name):
    from hms_train.model.kinds import create_model

    config = load_config(name)
    size = (400, 912) if name.startswith("seed_richard") else (400, 768)
    model = create_model(config.model.name, image_size=size, **config.model.without_pretrained_weights().kwargs())
    # David's MobileNetV3 pools torchvision's 960-channel features (D/model.py:87 cnn_ch = 960)
    assert model.num_features == {"seed_david_mnv3": 960, "seed_richard_convnext": 1024}.get(name, 1280)
    if config.model.settings.pool == "attention":
        assert model.pool.width == 29, "Richard's WidthAttention(C, 29): 912 / 32 columns"
    model.eval()
    with torch.no_grad():
        assert model(torch.zeros(1, 1, *size)).shape == (1, 6)


def test_plan_shows_each_stage_before_anything_runs(both_store, tmp_path):
    """`hms-train plan`: rows, rows needing a targets file (which need not exist yet), epochs, steps and
    the learning rate of each epoch, as the loop will use them; David's cosine over 15 epochs per epoch
    (train-mlflow.py: CosineAnnealingLR(T_max=args.epochs), stepped once per epoch)."""
    from typer.testing import CliRunner

    from hms_train.cli import app

    missing = tmp_path / "not-yet.parquet"
    result = CliRunner().invoke(app, ["plan", "--config", "seed_richard_b0_pl", "--store", both_store, "--json",
                                      "--set", "folds=[0]", "--set", f'pseudo_labels="{missing}"',
                                      "--set", "batch_size=4"])
    assert result.exit_code == 0, result.output
    planned = json.loads(result.output)
    assert planned["image_shape"] == [1, 400, 912] and [f["fold"] for f in planned["folds"]] == [0]
    from hms_train.data.tables import richard_rows

    assert (planned["row_table"], planned["table_rows"]) == ("richard", len(richard_rows(StoreReader(both_store, ["eeg_10s"]).labels)))
    stage1, stage2 = planned["folds"][0]["stages"]
    reader = StoreReader(both_store, ["eeg_10s"])
    config = load_config("seed_richard_b0_pl", [f'store="{both_store}"', f'pseudo_labels="{missing}"', "batch_size=4"])
    stages = fold_stages(config, reader, 0, reader.targets)
    assert (stage1["train_rows"], stage1["val_rows"]) == (len(stages[0].rows), len(stages[0].val_rows))
    assert stage2["file_target_rows"] == int((reader.votes[stages[1].rows] < 8).sum()) > 0
    assert stage1["steps_per_epoch"] == len(stages[0].rows) // 4 and stage1["lr"] == [3e-4] * 25
    result = CliRunner().invoke(app, ["plan", "--config", "seed_david_b0", "--store", both_store, "--json",
                                      "--set", "folds=[0]", "--set", "stage2_epochs=0", "--set", "epochs=15",
                                      "--set", "batch_size=4"])
    lr = json.loads(result.output)["folds"][0]["stages"][0]["lr"]
    assert [round(x * 1e4, 2) for x in lr[:4]] == [2.00, 1.98, 1.91, 1.81]
    # the text form: a constant rate once, with its count; a cosine epoch by epoch
    result = CliRunner().invoke(app, ["plan", "--config", "seed_richard_b0", "--store", both_store,
                                      "--set", "folds=[0]", "--set", "batch_size=4"])
    assert result.exit_code == 0, result.output
    assert "lr per epoch 3.00e-04 x 25\n" in result.output and "lr per epoch 3.00e-04 x 15\n" in result.output
    assert describe_rates([2e-4, 1.98e-4, 1.98e-4, 3e-4]) == "2.00e-04, 1.98e-04 x 2, 3.00e-04"


@pytest.mark.parametrize("after, every, steps", [(5, 3, 30), (50, 3, 90), (0, 1, 12)])
def test_the_ema_equals_ema_pytorch_step_for_step(after, every, steps):
    """David's EMA (D/trainer.py: EMA(model, update_after_step=50, update_every=3, beta=0.99), its
    update() after every optimizer step) against ema_pytorch itself, weights and BatchNorm statistics
    compared after every step. (Passing timm the call number instead of the step, the warm-up lags by one
    step: checked, it fails here.)"""
    from ema_pytorch import EMA

    from hms_train.run.epochs import update_ema
    from hms_train.run.parts import training_parts

    config = load_config("smoke", ["ema_decay=0.99", "ema_warmup=true", f"ema_update_after_step={after}",
                                   f"ema_update_every={every}"])
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    theirs = EMA(model, beta=0.99, update_after_step=after, update_every=every)
    ours = training_parts(config, model, config.lr, 1, 1).ema  # the loop's own EMA (hms_train/run/parts.py)
    for step in range(1, steps + 1):
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.copy_(torch.randn_like(parameter))
            model(torch.randn(8, 3))  # new running statistics
        theirs.update()
        update_ema(ours, model, step, config)
        for (name, mine), (_, reference) in zip(ours.module.state_dict().items(), theirs.ema_model.state_dict().items()):
            if mine.is_floating_point():  # ema_pytorch leaves integer buffers (num_batches_tracked) alone
                torch.testing.assert_close(mine, reference, rtol=1e-6, atol=1e-7, msg=f"step {step}: {name}")


def test_one_lion_step_equals_lion_pytorch():
    """David's optimizer (D/train-mlflow.py:161-162: Lion(model.parameters(), lr=args.lr / 5,
    weight_decay=args.weight_decay), lion_pytorch) against ours (timm's Lion, one parameter group as
    weight_decay_all gives), from the same weights and gradients: the first step exactly, then three more."""
    from lion_pytorch import Lion

    from hms_train.run.parts import training_parts

    config = load_config("seed_david_b0")
    torch.manual_seed(0)
    ours_model = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.LayerNorm(4))
    theirs_model = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.LayerNorm(4))
    theirs_model.load_state_dict(ours_model.state_dict())
    # the loop's own optimizer (hms_train/run/parts.py), not a copy of its construction
    ours = training_parts(config, ours_model, config.lr, 1, 1, with_ema=False).optimizer
    theirs = Lion(theirs_model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    for step in range(4):
        for mine, reference in zip(ours_model.parameters(), theirs_model.parameters()):
            mine.grad = torch.randn_like(mine)
            reference.grad = mine.grad.clone()
        ours.step(), theirs.step()
        for mine, reference in zip(ours_model.parameters(), theirs_model.parameters()):
            if step == 0:
                assert torch.equal(mine, reference)
            torch.testing.assert_close(mine, reference, rtol=0, atol=1e-7)
    assert not torch.equal(ours_model[0].weight, ours_model[0].weight.new_zeros(4, 5))


def test_one_schedule_across_stages_carries_optimizer_and_lr(both_store, tmp_path):
    """David: one cosine over 3 + 12 epochs, optimizer, schedule and EMA carried into stage 2
    (D/train-mlflow.py); here 2 + 2 epochs, the learning rates the loop used are the plan's."""
    sets = [f'store="{both_store}"', *TINY, "epochs=2", "stage2_epochs=2", "max_batches_per_epoch=2"]
    config = load_config("seed_david_b0", [*sets, "schedule_across_stages=true", "weight_decay_all=true",
                                           'optimizer="adamw"'])  # AdamW counts its steps (Lion keeps no count)
    out = tmp_path / "run"
    with SteppedRates() as stepped:
        train(config, out, quiet=True)
    from hms_train.run.plan import describe, plan_run

    reader = StoreReader(both_store, config.inputs)
    planned = describe(plan_run(dataclasses_replace(config, folds=[0]), reader), reader)
    # The lr of every step the loop took (each stage's steps per epoch, 4 epochs across both stages): one
    # cosine, each epoch's value held through its steps, as the plan says.
    per_epoch = [2.0, round(2e4 * (1 + math.cos(math.pi / 4)) / 2 * 1e-4, 4),
                 1.0, round(2e4 * (1 + math.cos(3 * math.pi / 4)) / 2 * 1e-4, 4)]
    steps = [stage["steps_per_epoch"] for stage in planned["folds"][0]["stages"] for _ in range(stage["epochs"])]
    assert [round(x * 1e4, 4) for x in stepped.lrs] == [lr for lr, n in zip(per_epoch, steps) for _ in range(n)], \
        (stepped.lrs, steps)
    lrs = [lr for stage in planned["folds"][0]["stages"] for lr in stage["lr"]]
    assert [round(x * 1e4, 4) for x in lrs] == per_epoch
    last = torch.load(out / "fold0_last.pt", weights_only=True)
    steps = sum(stage["steps_per_epoch"] * stage["epochs"] for stage in planned["folds"][0]["stages"])
    assert last["position"]["step"] == steps  # the step count ran on through stage 2
    assert next(iter(last["optimizer"]["state"].values()))["step"] == steps  # the same optimizer
    assert len(last["optimizer"]["param_groups"]) == 1  # every parameter decayed, biases and norms too
    with pytest.raises(ConfigError, match='schedule_across_stages: .* set schedule_unit = "epoch"'):
        load_config("smoke", ["schedule_across_stages=true"])


def dataclasses_replace(config, **changes):
    import dataclasses

    return dataclasses.replace(config, **changes)


def uniform_targets(reader: StoreReader, rows: np.ndarray, path) -> None:
    uniform_pseudo_labels(reader, rows, path)


def test_distillation_trains_every_row_on_the_teacher_and_validates_on_the_truth(both_store, tmp_path):
    """Richard's KD runs (R/Train_V4_Kaggle_KD.ipynb c3, c9): one stage, every training row on the
    teacher's probabilities, validation and checkpoint choice on the true labels."""
    from hms_train.run.plan import plan_run

    teacher = tmp_path / "teacher.parquet"
    config = load_config("seed_richard_b0_kd", [f'store="{both_store}"', f'teacher_targets="{teacher}"', "folds=[0]",
                                                "batch_size=2"])
    reader = StoreReader(both_store, config.inputs)
    with pytest.raises(FileNotFoundError, match="teacher_targets: .*not found"):
        plan_run(config, reader)
    assert plan_run(config, reader, read_files=False).folds[0][0].file_target_rows > 0  # `hms-train plan` before the file
    everything = reader.select(Selection())
    training = plan_run(config, reader, read_files=False).folds[0][0].rows
    uniform_targets(reader, np.setdiff1d(everything, training[:1]), teacher)
    with pytest.raises(ValueError, match=r"no target for 1 of the \d+ rows that training uses"):
        plan_run(config, reader)
    uniform_targets(reader, everything, teacher)
    plan = plan_run(config, reader)
    (stage,) = plan.folds[0]
    assert stage.file_target_rows == len(stage.rows) and stage.epochs == 25
    np.testing.assert_allclose(stage.targets[stage.rows], 1 / 6)
    np.testing.assert_array_equal(plan.scope.targets[stage.val_rows], reader.targets[stage.val_rows])
    assert not np.allclose(reader.targets[stage.val_rows], 1 / 6)
    with pytest.raises(ConfigError, match="teacher_targets: .*drop pseudo_labels"):
        load_config("seed_richard_b0_kd", ['pseudo_labels="pl.parquet"', 'pseudo_stage="stage1"'])


def test_davids_pseudo_labels_replace_targets_below_ten_votes_of_the_target_line_in_one_stage(both_store, tmp_path):
    """David's PL runs (D/script/run_commands.py:23-28, data_loader.py:381-385): one 15-epoch stage on his
    table, a row's target replaced when the line it is read from has fewer than 10 votes."""
    from hms_train.data.tables import david_rows
    from hms_train.run.plan import plan_run

    path = tmp_path / "pseudo_david.parquet"
    config = load_config("seed_david_b0_pl", [f'store="{both_store}"', f'pseudo_labels="{path}"', "folds=[0]", "batch_size=2"])
    reader = StoreReader(both_store, config.inputs)
    uniform_pseudo_labels(reader, reader.select(Selection()), path)
    plan = plan_run(config, reader)
    (stage,) = plan.folds[0]
    table = david_rows(reader.labels)
    fold = reader.column("fold")
    training = fold[table.rows] != 0
    assert np.array_equal(stage.rows, table.rows[training]) and stage.epochs == 15
    low = reader.votes[table.target_rows[training]] < 10
    assert stage.file_target_rows == int(low.sum()) > 0
    np.testing.assert_allclose(stage.targets[stage.rows[low]], 1 / 6)
    np.testing.assert_array_equal(stage.targets[stage.rows[~low]], reader.targets[table.target_rows[training][~low]])
    with pytest.raises(ConfigError, match="pseudo_labels: used in stage 2, but stage2_epochs = 0"):
        load_config("seed_david_b0_pl", ['pseudo_stage="stage2"'])


@pytest.mark.parametrize("name, base", [("seed_richard_b0_kd", "seed_richard_b0"), ("seed_richard_v2s_kd", "seed_richard_v2s"),
                                        ("seed_richard_convnext_kd", "seed_richard_convnext"),
                                        ("seed_david_b0_pl", "seed_david_b0"), ("seed_david_mnv3_pl", "seed_david_mnv3")])
def test_second_round_recipes_change_only_what_the_seed_changed(name, base):
    import dataclasses

    changed = {key: value for key, value in dataclasses.asdict(load_config(name)).items()
               if value != dataclasses.asdict(load_config(base))[key]}
    if name.endswith("_kd"):
        assert changed == {"teacher_targets": "teacher.parquet", "stage2_epochs": 0}
    else:
        assert changed == {"pseudo_labels": "pseudo_david.parquet", "pseudo_stage": "stage1", "epochs": 15,
                           "stage2_epochs": 0}


def test_david_flips_each_part_in_place_and_richard_the_whole_image():
    assert load_config("seed_david_b0").augment.steps["time_flip"].per_part
    assert not load_config("seed_richard_b0").augment.steps["time_flip"].per_part


def test_scaled_gradient_clipping_is_davids_clip_before_unscale():
    """D/trainer.py (fp16, 'use-amp'): scaler.scale(loss).backward(); clip_grad_norm_(..., max_norm=10.0);
    scaler.unscale_(optimizer). `grad_clip_scaled` gives the same unscaled gradients without a scaler,
    at the first step and after the scaler's first growth (2000 steps); plain clipping at 10 does not."""
    from hms_train.run.step import GRAD_SCALER_GROWTH_INTERVAL, clip_gradients

    torch.manual_seed(0)
    model = torch.nn.Linear(6, 3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)  # lr 0: the scaler's steps leave the weights
    scaler = torch.amp.GradScaler("cpu")
    x = torch.randn(4, 6)
    for steps_done in range(GRAD_SCALER_GROWTH_INTERVAL + 1):
        if steps_done in (0, GRAD_SCALER_GROWTH_INTERVAL):
            optimizer.zero_grad()
            scaler.scale(model(x).square().mean()).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=10.0)
            scaler.unscale_(optimizer)
            theirs = [p.grad.clone() for p in model.parameters()]
            scale = scaler.get_scale()
            scaler.step(optimizer), scaler.update()
            optimizer.zero_grad()
            model(x).square().mean().backward()
            clip_gradients(model.parameters(), 10.0, True, steps_done)
            for mine, reference in zip((p.grad for p in model.parameters()), theirs):
                torch.testing.assert_close(mine, reference, rtol=1e-5, atol=1e-12)
            norm = torch.cat([g.flatten() for g in theirs]).norm()
            assert scale == 2.0 ** (16 + steps_done // GRAD_SCALER_GROWTH_INTERVAL)  # premise: it grew
            assert norm == pytest.approx(10.0 / scale, rel=1e-4)  # the clip acted
        else:  # a cheap step the scaler counts towards its growth
            optimizer.zero_grad()
            scaler.scale(model(x[:1]).sum()).backward()
            scaler.step(optimizer), scaler.update()
    optimizer.zero_grad()
    model(x).square().mean().backward()
    before = torch.cat([p.grad.flatten() for p in model.parameters()]).norm()
    clip_gradients(model.parameters(), 10.0, False, 0)
    assert torch.cat([p.grad.flatten() for p in model.parameters()]).norm() == before < 10


def test_davids_evaluation_sees_the_rows_drawn_for_the_fold_flipped_in_place(both_store):
    """D/data_loader.py:388 flipped every image it read with p .5, validation and pseudo-labelling too:
    `eval_flip_p` draws the flipped rows once per fold, and those rows' images are each part reversed in
    place (his per-signal flip), exactly as the model sees them flipped by hand."""
    from hms_train.data.reader import to_device
    from hms_train.image.transforms import part_time_flip
    from hms_train.run.forward import eval_flips, model_inputs, predict_probabilities

    config = load_config("seed_david_b0", [f'store="{both_store}"', *TINY])
    reader = StoreReader(both_store, config.inputs)
    plan = plan_inputs(config, reader.descriptions)
    torch.manual_seed(0)
    model = plan.build_model().eval()
    with torch.no_grad():
        model.head.weight.mul_(300)  # logits far from uniform, so that a flip shows in the probabilities
    cpu = torch.device("cpu")
    flips = eval_flips(config, 0, reader.n_rows)
    assert np.array_equal(flips, eval_flips(config, 0, reader.n_rows)) and 0.2 < flips.mean() < 0.8
    assert not np.array_equal(flips, eval_flips(config, 1, reader.n_rows))
    rows = reader.select(Selection(folds=[0]))[:5]
    flipped = predict_probabilities(model, reader, rows, plan, cpu, flipped=np.ones(reader.n_rows, bool))
    plain = predict_probabilities(model, reader, rows, plan, cpu, flipped=np.zeros(reader.n_rows, bool))
    torch.testing.assert_close(torch.from_numpy(plain), torch.from_numpy(predict_probabilities(model, reader, rows, plan, cpu)))
    batches = reader.batches(rows, 64, shuffle=False)
    batch = to_device(next(iter(batches)), cpu)
    batches.close()
    image = model_inputs(batch, plan, train=False)["image"]
    columns = torch.from_numpy(plan.layout.part_flip_columns())
    with torch.no_grad():
        by_hand = model(image=part_time_flip(image, torch.ones(len(image), dtype=torch.bool), columns)).softmax(1)
    order = [list(rows).index(int(r)) for r in batch["row"]]
    torch.testing.assert_close(torch.from_numpy(flipped[order]), by_hand, rtol=1e-4, atol=1e-5)
    assert np.abs(flipped - plain).max() > 1e-3
