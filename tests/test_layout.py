"""Image layouts: pixel-exact placement, whole-image width, crops, the checks, and the trainer's glue
(model_spec, make_augmenter, predict_probabilities) on a real store."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from hms_prep.domain import MIRRORED_CHAINS, standardise
from hms_prep.store.arrays import NORMALISE_NONE, NORMALISE_ZSCORE, ROLE_SIGNALS
from hms_train.image.augment import AugmentConfig
from hms_train.image.transforms import hemisphere_swap
from hms_train.image.compose import compose, eval_windows
from hms_train.run.config import TrainConfig
from hms_train.run.config_values import ConfigError
from hms_train.run.forward import make_augmenter, model_inputs, predict_probabilities, run_model
from hms_train.run.inputs import check_augment, plan_inputs
from hms_train.image.layout import LayoutConfig, LayoutError, PartSource, resolve_layout
from hms_train.model.kinds import create_model
from hms_train.data.reader import Selection, StoreReader
from hms_train.run.bench import bench_plan

DAVID = {
    "parts": [
        {"array": "eeg_10s_m50", "row": 0, "col": 0},
        {"array": "eeg_14s_m50", "row": 0, "col": 256},
        {"array": "eeg_30s_m50", "row": 200, "col": 0},
        {"array": "eeg_44s_m50", "row": 200, "col": 256},
        {"array": "kaggle", "row": 0, "col": 512, "width": 256, "train_crop": "random", "eval_crop": "first"},
    ]
}
MELS_50 = ("eeg_10s_m50", "eeg_14s_m50", "eeg_30s_m50", "eeg_44s_m50")
DAVID_SOURCES = {**{name: PartSource.image_part((4, 50, 256)) for name in MELS_50},
                 "kaggle": PartSource.image_part((4, 100, 300), NORMALISE_ZSCORE)}
RICHARD_SOURCES = {"eeg_10s": PartSource.image_part((4, 100, 256)), "eeg_30s": PartSource.image_part((4, 100, 256)),
                   "kaggle": PartSource.image_part((4, 100, 300), NORMALISE_ZSCORE)}


def layout_of(values: dict, sources=DAVID_SOURCES):
    return resolve_layout(LayoutConfig.parse(values), sources)


def numbered_parts(batch: int, sources: dict[str, PartSource]) -> dict[str, torch.Tensor]:
    """Parts whose every value is distinct (exact in float32): a misplaced block cannot match."""
    parts, offset = {}, 0
    for name, source in sources.items():
        size = batch * 4 * source.freqs * source.times
        parts[name] = (torch.arange(size, dtype=torch.float32) + offset).reshape(batch, 4, source.freqs, source.times)
        offset += size
    return parts


def test_davids_image_puts_every_block_in_its_place():
    layout = layout_of(DAVID)
    assert layout.image_size == (400, 768)
    parts = numbered_parts(2, DAVID_SOURCES)
    image = compose(layout, parts, train=False)
    assert image.shape == (2, 1, 400, 768) and image.dtype == torch.float32
    for name, row, col in [("eeg_10s_m50", 0, 0), ("eeg_14s_m50", 0, 256), ("eeg_30s_m50", 200, 0),
                           ("eeg_44s_m50", 200, 256)]:
        for chain in range(4):
            block = image[:, 0, row + 50 * chain : row + 50 * (chain + 1), col : col + 256]
            assert torch.equal(block, parts[name][:, chain]), (name, chain)
    kaggle = standardise(parts["kaggle"], axes=(1, 2, 3))  # over the whole 600 s block, then cut
    for chain in range(4):
        block = image[:, 0, 100 * chain : 100 * (chain + 1), 512:768]
        torch.testing.assert_close(block, kaggle[:, chain, :, :256], rtol=0, atol=1e-5)

    trained = compose(layout, parts, train=True, generator=torch.Generator().manual_seed(0))
    assert trained.shape == (2, 1, 400, 768)
    assert torch.equal(trained[..., :512], image[..., :512])
    for b in range(2):  # a random 256 of the 300 standardised columns, the same start for every row
        start = int(torch.argmin((kaggle[b, 0, 0] - trained[b, 0, 0, 512]).abs()))
        torch.testing.assert_close(trained[b, 0, :, 512:], kaggle[b, :, :, start : start + 256].reshape(400, 256),
                                   rtol=0, atol=1e-5)


def test_hemisphere_swap_mirrors_the_chains_of_every_tiled_part():
    layout = layout_of(DAVID)
    parts = numbered_parts(2, DAVID_SOURCES)
    image = compose(layout, parts, train=False)
    swapped = hemisphere_swap(image, torch.tensor([True, False]), torch.from_numpy(layout.mirror_rows()))
    mirrored = compose(layout, {name: part[:, list(MIRRORED_CHAINS)] for name, part in parts.items()}, train=False)
    assert torch.equal(swapped[0], mirrored[0])
    assert torch.equal(swapped[1], image[1])


def test_side_by_side_parts_padded_to_a_whole_image_width():
    layout = layout_of({"parts": [{"array": "eeg_10s"}, {"array": "eeg_30s"}, {"array": "kaggle"}], "width": 912},
                       RICHARD_SOURCES)
    assert [(p.col, p.width) for p in layout.parts] == [(0, 256), (256, 256), (512, 300)]
    assert layout.image_size == (400, 912)
    parts = numbered_parts(2, RICHARD_SOURCES)
    for train in (True, False):
        image = compose(layout, parts, train=train)
        assert image.shape == (2, 1, 400, 912)
        assert bool((image[..., 812:] == 0).all())
        assert torch.equal(image[..., :256], parts["eeg_10s"].reshape(2, 1, 400, 256))


def test_wider_images_are_cropped_randomly_in_training_and_slid_over_at_evaluation():
    values = {"parts": [{"array": "eeg_10s"}, {"array": "eeg_30s"}, {"array": "kaggle"}], "width": 700,
              "train_crop": "random", "eval_crop": "sliding", "stride": 50}
    layout = layout_of(values, RICHARD_SOURCES)
    assert layout.image_size == (400, 700) and layout.composed_width == 812
    assert layout.window_starts() == [0, 50, 100, 112]  # the last window flush with the right edge
    parts = numbered_parts(3, RICHARD_SOURCES)
    full = compose(layout, parts, train=False)
    assert full.shape == (3, 1, 400, 812)
    windows = list(eval_windows(layout, full))
    assert [w.shape[-1] for w in windows] == [700] * 4 and torch.equal(windows[3], full[..., 112:])
    trained = compose(layout, parts, train=True, generator=torch.Generator().manual_seed(1))
    assert trained.shape == (3, 1, 400, 700)
    for b in range(3):
        start = int(trained[b, 0, 0, 0] - full[b, 0, 0, 0])  # eeg_10s columns count up by one
        assert torch.equal(trained[b], full[b, ..., start : start + 700])
    first = layout_of({**values, "eval_crop": "first", "stride": None}, RICHARD_SOURCES)
    assert torch.equal(compose(first, parts, train=False), full[..., :700])


@pytest.mark.parametrize("change, message", [
    ({"colour": 1}, r"unknown key\(s\) \['colour'\] in layout"),
    ({"parts": []}, "layout.parts must be a non-empty list"),
    ({"parts": [{"array": "kaggle", "rows": 0}]}, r"unknown key\(s\) \['rows'\] in layout.parts\[0\]"),
    ({"parts": [{"row": 0}]}, r"layout.parts\[0\].array is required"),
    ({"parts": [{"array": "kaggle", "width": 0}]}, r"layout.parts\[0\].width = 0; expected an integer >= 1"),
    ({"parts": [{"array": "kaggle", "eval_crop": "random"}]}, r"layout.parts\[0\].eval_crop = 'random'; allowed"),
    ({"parts": [{"array": "kaggle"}], "eval_crop": "sliding", "width": 100}, "layout.stride is needed"),
    ({"parts": [{"array": "kaggle"}], "train_crop": "random"}, "set it"),
    ({"parts": [{"array": "kaggle"}], "width": 100, "eval_crop": "sliding", "stride": 101}, "skip columns"),
])
def test_layout_config_errors_name_the_key(change, message):
    with pytest.raises(LayoutError, match=message):
        LayoutConfig.parse({**DAVID, **change})


@pytest.mark.parametrize("part, message", [
    ({"array": "eeg_30s_m50", "row": 100, "col": 0}, r"layout.parts\[2\] \('eeg_30s_m50'.* overlaps layout.parts\[0\]"),
    ({"array": "eeg_30s_m50", "row": 201, "col": 0}, "must tile it without gaps"),
    ({"array": "eeg_99s", "row": 200, "col": 0}, r"layout.parts\[2\].array 'eeg_99s' is not an array of the store"),
    ({"array": "raw", "row": 200, "col": 0}, r"'raw' is not an image part \(its role is 'signals'\)"),
])
def test_layout_is_checked_against_the_store(part, message):
    parts = [dict(p) for p in DAVID["parts"]]
    parts[2] = part
    with pytest.raises(LayoutError, match=message):
        layout_of({"parts": parts}, {**DAVID_SOURCES, "raw": PartSource(ROLE_SIGNALS, NORMALISE_NONE, 18, 10**6)})
    too_wide = [*DAVID["parts"][:4], {**DAVID["parts"][4], "width": 301}]
    with pytest.raises(LayoutError, match=r"layout.parts\[4\].width 301 is wider than 'kaggle'"):
        layout_of({"parts": too_wide})


def test_tiled_layouts_cropped_to_a_width_refuse_the_hemisphere_swap():
    with pytest.raises(LayoutError, match="hemisphere_swap_p = 0"):
        layout_of({**DAVID, "width": 700}).mirror_rows()


# --- the trainer's glue on a real store ------------------------------------------------------------------

TINY = {"backbone": "mobilenetv3_small_050", "device": "cpu", "channels_last": False, "amp": False}


def spectrogram_config(store: str, **values) -> TrainConfig:
    return TrainConfig.from_dict({"store": store, "inputs": ["eeg_10s", "kaggle"], **TINY, **values})


@pytest.fixture(scope="module")
def reader(train_store) -> StoreReader:
    return StoreReader(train_store, ["eeg_10s", "eeg_30s", "kaggle", "raw"], threads=1)


def inputs_of(config: TrainConfig, reader: StoreReader):
    return plan_inputs(config, reader.descriptions)


def test_a_narrower_kaggle_part_trains_and_evaluates_at_one_size(train_store, reader):
    """Once "AttentionPool was built for feature maps 16 columns wide but got 18": now one width."""
    layout = {"parts": [{"array": "eeg_10s"}, {"array": "kaggle", "width": 200}]}
    config = spectrogram_config(train_store, layout=layout, pool="attention")
    plan = inputs_of(config, reader)
    spec = plan.model_spec
    assert json.loads(json.dumps(spec)) == spec
    assert spec["kwargs"]["image_size"] == [400, 456]
    model = create_model(spec["name"], **spec["kwargs"])
    batch = next(iter(reader.batches(reader.select(Selection()), 4, shuffle=False)))
    for train in (True, False):
        inputs = model_inputs(batch, plan, train=train)
        assert inputs["image"].shape == (4, 1, 400, 456)
        assert run_model(model.eval(), inputs).shape == (4, 6)


def test_sliding_windows_average_the_models_probabilities(train_store, reader):
    layout_values = {"parts": [{"array": "eeg_10s"}, {"array": "kaggle"}], "width": 400, "eval_crop": "sliding",
                     "stride": 100}
    config = spectrogram_config(train_store, pool="avg", layout=layout_values)
    plan = inputs_of(config, reader)
    assert plan.layout.window_starts() == [0, 100, 156]
    spec = plan.model_spec
    assert spec["kwargs"]["image_size"] == [400, 400]
    torch.manual_seed(0)
    model = create_model(spec["name"], **spec["kwargs"]).eval()
    rows = reader.select(Selection())[:5]
    probs = predict_probabilities(model, reader, rows, plan, torch.device("cpu"), tta_hflip=True)
    batch = next(iter(reader.batches(rows, 5, shuffle=False)))
    canvas = model_inputs(batch, plan, train=False)["image"]
    with torch.no_grad():
        views = [model(image[..., s : s + 400]).softmax(1) for s in (0, 100, 156) for image in (canvas, canvas.flip(-1))]
    expected = torch.stack(views).mean(0).numpy()
    order = [list(rows).index(r) for r in batch["row"].tolist()]
    np.testing.assert_allclose(probs[order], expected, atol=1e-5)


def test_layout_arrays_must_be_read_and_placed(train_store, reader):
    layout_values = {"parts": [{"array": "eeg_10s"}, {"array": "eeg_30s"}]}
    with pytest.raises(LayoutError, match=r"layout.parts\[1\].array 'eeg_30s' is not in inputs"):
        inputs_of(spectrogram_config(train_store, inputs=["eeg_10s"], layout=layout_values), reader)
    with pytest.raises(LayoutError, match=r"inputs \['kaggle'\] are not placed in the layout"):
        inputs_of(spectrogram_config(train_store, inputs=["eeg_10s", "eeg_30s", "kaggle"], layout=layout_values), reader)
    with pytest.raises(ConfigError, match=r"kaggle_width was removed: .*\[layout\]"):
        spectrogram_config(train_store, kaggle_width=100)


def test_parts_are_normalised_as_their_arrays_say(train_store, reader):
    """The Kaggle crop is z-scored per sample because its attributes say so, not because of its name."""
    plan = inputs_of(spectrogram_config(train_store), reader)
    assert [(p.array, p.normalise) for p in plan.layout.parts] == [("eeg_10s", NORMALISE_NONE),
                                                                     ("kaggle", NORMALISE_ZSCORE)]
    batch = next(iter(reader.batches(reader.select(Selection())[:3], 3, shuffle=False)))
    image = model_inputs(batch, plan, train=False)["image"]
    kaggle = image[..., 256:]
    expected = standardise(batch["kaggle"].float(), axes=(1, 2, 3)).reshape(3, 1, 400, 300)
    torch.testing.assert_close(kaggle, expected)
    torch.testing.assert_close(image[..., :256], batch["eeg_10s"].float().reshape(3, 1, 400, 256))


def test_multimodal_models_refuse_augmentations_of_the_image_alone(train_store, reader):
    values = {"model": "multimodal", "inputs": ["eeg_10s", "kaggle", "raw"]}
    config = spectrogram_config(train_store, **values)
    with pytest.raises(ConfigError, match=r"\['augment.hemisphere_swap.p', 'augment.time_flip.p', "
                                          r"'augment.shift_scale_rotate.p', 'augment.mixup.p'\] would change the image alone"):
        check_augment(config, inputs_of(config, reader))
    image_only = {name: {"p": 0.0} for name in ("hemisphere_swap", "time_flip", "vertical_flip", "shift_scale_rotate",
                                                 "mixup")}
    synced = spectrogram_config(train_store, **values, augment=image_only)
    augmenter = make_augmenter(bench_plan(synced, reader), torch.Generator())
    assert augmenter.config.steps["brightness_contrast"] == AugmentConfig().steps["brightness_contrast"]
    spec = inputs_of(synced, reader).model_spec
    assert spec["kwargs"]["raw_channels"] == reader.arrays["raw"].shape[0]
    assert set(spec["kwargs"]) == {"image_size", "backbone", "pool", "drop_rate", "drop_path_rate", "pretrained",
                                   "weights", "conv_head", "raw_channels", "raw_samples"}  # no dropout_at: one head


def test_inputs_are_found_by_role(train_store, reader):
    with pytest.raises(ConfigError, match=r"model kind '1d' takes one signals array; .* hold 0"):
        inputs_of(spectrogram_config(train_store, model="1d", inputs=["eeg_10s"]), reader)
    with pytest.raises(ConfigError, match=r"inputs: \['raw'\] are signals arrays, which model kind '2d' does not take \(it takes image\)"):
        inputs_of(spectrogram_config(train_store, inputs=["eeg_10s", "raw"]), reader)
    with pytest.raises(ConfigError, match=r"\['eeg_10s'\] are image arrays, which model kind '1d' does not take \(it takes signals\)"):
        inputs_of(spectrogram_config(train_store, model="1d", inputs=["eeg_10s", "raw"]), reader)
    plan = inputs_of(spectrogram_config(train_store, model="1d", inputs=["raw"]), reader)
    assert plan.signals == "raw" and plan.layout is None


def test_davids_time_flip_reverses_each_part_in_place():
    """D/data_loader.py: flip_data reverses the Kaggle crop and each EEG tile along time where they sit
    (the Kaggle part stays left), not the whole image."""
    from hms_train.image.transforms import part_time_flip

    davids = {**DAVID, "parts": [{**DAVID["parts"][4], "col": 0}, *[{**p, "col": p["col"] + 256} for p in DAVID["parts"][:4]]]}
    layout = layout_of(davids)
    parts = numbered_parts(2, DAVID_SOURCES)
    image = compose(layout, parts, train=False)
    flipped = part_time_flip(image, torch.tensor([True, False]), torch.from_numpy(layout.part_flip_columns()))
    expected = image.clone()
    for part in layout.parts:
        rows, cols = slice(part.row, part.row + part.height), slice(part.col, part.col + part.width)
        expected[0, :, rows, cols] = image[0, :, rows, cols].flip(-1)
    assert torch.equal(flipped[0], expected[0]) and torch.equal(flipped[1], image[1])
    assert not torch.equal(flipped[0], image[0].flip(-1))  # not the whole-image flip
    with pytest.raises(LayoutError, match="in place needs the parts where the layout puts them"):
        layout_of({**davids, "width": 700}).part_flip_columns()

