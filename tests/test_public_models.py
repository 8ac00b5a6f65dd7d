"""The seed's public half (docs/recipes.md, "The seed's public half"): the torch ports of the public
notebooks' models (forward shapes at pretrained=false, the map features and crops, the features-head canvas
against a transcription of HMS_balance.py's generate_specs), and each public recipe planned and trained
one step on a store holding the arrays they read."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from hms_train.model.features_head import features_head_canvas
from hms_train.model.kinds import create_model
from hms_train.model.resnet1d_gru import MAP_FEATURES, crop_time, map_features
from hms_train.run.config import bundled_configs, load_config
from hms_train.run.train import train

PUBLIC = sorted(name for name in bundled_configs() if name.startswith("public_"))
TOY = ["epochs=1", "stage2_epochs=1", "folds=[0]",
       "max_batches_per_epoch=1", "batch_size=4", 'device="cpu"', "reader_threads=2"]
SMALL = "mobilenetv3_small_050"


def test_map_features_are_the_notebooks_electrode_pairs():
    """Each of HMS_balance.py's eight map features is the sum of two consecutive pairs of the store's montage."""
    from hms_prep.sources.montage import BIPOLAR_PAIRS

    for name, (first, second) in MAP_FEATURES:
        a, b = BIPOLAR_PAIRS[first]
        c, d = BIPOLAR_PAIRS[second]
        assert b == c and name == f"{a}-{d}"
    signals = torch.randn(2, 18, 50)
    features = map_features(signals)
    torch.testing.assert_close(features[:, 0], signals[:, 0] + signals[:, 1])
    torch.testing.assert_close(features[:, 7], signals[:, 6] + signals[:, 7])


def test_crop_keeps_the_middle_at_evaluation_and_a_random_10_s_in_training():
    signals = torch.arange(10000.0).expand(3, 8, -1)
    middle = crop_time(signals, 2000, random=False)
    assert middle.shape == (3, 8, 2000) and middle[0, 0, 0] == 4000  # (10000 - 2000) // 2
    torch.manual_seed(0)
    random = crop_time(signals, 2000, random=True)
    starts = random[:, 0, 0]
    assert random.shape == (3, 8, 2000) and (starts % 8 == 0).all()  # 8000 * randint(0, 1000) // 1000
    torch.testing.assert_close(random[:, :, -1] - random[:, :, 0], torch.full((3, 8), 1999.0))


def test_resnet1d_gru_is_the_notebooks_304_feature_net():
    model = create_model("resnet1d_gru", raw_channels=18, raw_samples=10000).eval()
    assert model.num_features == 304  # HMS_balance.py CFG.linear_layer_features = 304 for 2,000 samples
    assert model(torch.randn(2, 18, 10000)).shape == (2, 6)
    with pytest.raises(ValueError, match="built for 18 signals"):
        model(torch.randn(2, 16, 10000))


def test_resnet1d_gru_reads_each_row_alone_unless_asked_for_the_seeds_wiring():
    """The seed's GRU ran over the batch's rows (no batch_first): a row's output then changes with its batch."""
    torch.manual_seed(0)
    own = create_model("resnet1d_gru", gru_over_batch=False).eval()
    torch.manual_seed(0)
    seeds = create_model("resnet1d_gru", gru_over_batch=True).eval()
    batch = torch.randn(3, 18, 10000)
    with torch.no_grad():
        torch.testing.assert_close(own(batch)[:1], own(batch[:1]))
        assert not torch.allclose(seeds(batch)[:1], seeds(batch[:1]))


def transcribed_generate_specs(img: np.ndarray) -> np.ndarray:
    """HMS_balance.py DataGenerator.generate_specs for one (100, 300, 4) block in their chain order (LL, LP,
    RL, RP), after the log: the min-max and the placement, line by line (the 255 left out, as Keras'
    Rescaling(1/255) undoes it)."""
    X = np.zeros((512, 512, 3), dtype="float32")
    mn, mx = img.flatten().min(), img.flatten().max()
    img = (img - mn) / (mx - mn + 1e-5)
    X[0 + 56:100 + 56, :256, 0] = img[:, 22:-22, 0]
    X[100 + 56:200 + 56, :256, 0] = img[:, 22:-22, 2]
    X[0 + 56:100 + 56, :256, 1] = img[:, 22:-22, 1]
    X[100 + 56:200 + 56, :256, 1] = img[:, 22:-22, 3]
    X[0 + 56:100 + 56, :256, 2] = img[:, 22:-22, 2]
    X[100 + 56:200 + 56, :256, 2] = img[:, 22:-22, 1]
    X[0 + 56:100 + 56, 256:, 0] = img[:, 22:-22, 0]
    X[100 + 56:200 + 56, 256:, 0] = img[:, 22:-22, 1]
    X[0 + 56:100 + 56, 256:, 1] = img[:, 22:-22, 2]
    X[100 + 56:200 + 56, 256:, 1] = img[:, 22:-22, 3]
    X[200 + 56:300 + 56, :256, 0] = img[:, 22:-22, 0]
    X[300 + 56:400 + 56, :256, 0] = img[:, 22:-22, 1]
    X[200 + 56:300 + 56, :256, 1] = img[:, 22:-22, 2]
    X[300 + 56:400 + 56, :256, 1] = img[:, 22:-22, 3]
    X[200 + 56:300 + 56, :256, 2] = img[:, 22:-22, 3]
    X[300 + 56:400 + 56, :256, 2] = img[:, 22:-22, 2]
    X[200 + 56:300 + 56, 256:, 0] = img[:, 22:-22, 0]
    X[300 + 56:400 + 56, 256:, 0] = img[:, 22:-22, 2]
    X[200 + 56:300 + 56, 256:, 1] = img[:, 22:-22, 1]
    X[300 + 56:400 + 56, 256:, 1] = img[:, 22:-22, 3]
    return X


def test_features_head_canvas_is_the_notebooks_image():
    rng = np.random.default_rng(0)
    theirs = rng.normal(size=(100, 300, 4)).astype(np.float32)  # chains LL, LP, RL, RP
    store_order = theirs[:, :, [0, 2, 1, 3]]  # LL, RL, LP, RP: the store's block order
    image = torch.from_numpy(np.concatenate([store_order[:, :, c] for c in range(4)], axis=0))[None, None]
    canvas = features_head_canvas(image)[0]
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    expected = torch.from_numpy(transcribed_generate_specs(theirs)).permute(2, 0, 1)
    torch.testing.assert_close(canvas * std + mean, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind, kwargs, inputs", [
    ("features_head_spec", {"image_size": [400, 300]}, ["image"]),
    ("features_head_spec", {"image_size": [800, 300]}, ["image"]),
    ("features_head_wave", {}, ["signals"]),
    ("features_head_hybrid", {"image_size": [800, 300]}, ["image", "signals"]),
    ("resized_2d", {"image_size": [400, 300]}, ["image"]),
    ("resized_2d", {"image_size": [800, 700], "resize_mode": "area", "flip_rows": True}, ["image"]),
])
def test_public_model_forward_shapes(kind, kwargs, inputs):
    if "image_size" in kwargs:
        kwargs = {**kwargs, "backbone": SMALL}
    model = create_model(kind, **kwargs).eval()
    batch = {"image": torch.randn(2, 1, *kwargs.get("image_size", (1, 1))), "signals": torch.randn(2, 18, 10000)}
    with torch.no_grad():
        assert model(*(batch[name] for name in inputs)).shape == (2, 6)


# cv2.resize(image, (2, 3)) and (4, 5) with interpolation=cv2.INTER_AREA, recorded with opencv-python-headless
# 5.1.0.95 (not a dependency): both axes shrink by non-integer factors, where cv2 weighs the border pixels by
# their part inside each output pixel's interval
CV2_AREA_7x5_TO_3x2 = [[11.516864776611328, 19.45907211303711], [64.21410369873047, 78.95585632324219],
                       [143.01260375976562, 162.1663818359375]]
CV2_AREA_11x9_TO_5x4 = [
    [1.9393939971923828, 3.7373740673065186, 3.2727274894714355, 1.959596037864685],
    [3.2626264095306396, 2.373737335205078, 3.323232412338257, 3.2828285694122314],
    [3.454545736312866, 3.2727274894714355, 2.383838653564453, 3.3333334922790527],
    [2.161616325378418, 3.252525568008423, 3.4949498176574707, 2.323232412338257],
    [3.626262664794922, 2.313131332397461, 2.9797980785369873, 3.6464648246765137]]


def test_area_resize_is_cv2s_inter_area():
    """public_lb31_b0's resize (HMS_LB31.ipynb cell 23, cv2.INTER_AREA) gives cv2's own outputs; torch's
    mode="area" (whole-pixel bins) would give 17.5 for the first pixel where cv2 gives 11.5. It refuses to
    enlarge (cv2's area table is for shrinking) in one line."""
    from hms_train.model.resized_2d import ResizedNet

    for (height, width), expected in (((7, 5), CV2_AREA_7x5_TO_3x2), ((11, 9), CV2_AREA_11x9_TO_5x4)):
        source = torch.arange(height * width, dtype=torch.float32).reshape(height, width)
        source = source**1.5 if height == 7 else source % 7
        size = (len(expected), len(expected[0]))
        net = ResizedNet(torch.nn.Identity(), size, "area", flip_rows=False, image_size=(height, width))
        torch.testing.assert_close(net.resize(source[None, None])[0, 0], torch.tensor(expected), atol=1e-4, rtol=1e-6)
    with pytest.raises(ValueError, match="shrinks only"):
        ResizedNet(torch.nn.Identity(), (512, 512), "area", flip_rows=False, image_size=(400, 700))


def test_wave_block_pads_like_keras_same():
    """Keras Conv1D(padding="same") with kernel 4, dilation 2: 6 zeros, 3 left and 3 right; an impulse's
    response sits where Keras puts it."""
    from hms_train.model.features_head import CausalSameConv1d

    conv = CausalSameConv1d(1, 1, 4, dilation=2, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([[[1.0, 2.0, 3.0, 4.0]]]))
        out = conv(torch.nn.functional.one_hot(torch.tensor(5), 12).float()[None, None])
    # out[t] = sum_k w[k] x[t - 3 + 2k]: the impulse at 5 reaches t = 8, 6, 4, 2 with w 1, 2, 3, 4
    assert out.shape[-1] == 12 and out[0, 0].tolist() == [0, 0, 4, 0, 3, 0, 2, 0, 1, 0, 0, 0]


# --- the recipes on a store holding their arrays ----------------------------------------------------------


@pytest.fixture(scope="module")
def public_store(train_store, synth_data, tmp_path_factory):
    """The default arrays (eeg_10s, eeg_30s, kaggle, raw: a copy of conftest's train_store) and the public
    recipes' three mel variants added, as `make seed` builds them (scripts/seed.sh PUBLIC_ARRAYS)."""
    import shutil

    from hms_prep.building.run import BuildConfig, run_build
    from hms_prep.kinds import MelParams

    url = str(tmp_path_factory.mktemp("public") / "specs.zarr")
    shutil.copytree(train_store, url)
    extra = (MelParams(window_s=50, hop_length=33, frames=300),
             MelParams(window_s=50, win_length=1024, hop_length=25, n_mels=200, frames=400),
             MelParams(window_s=10, win_length=260, hop_length=6, frames=300))
    run_build(BuildConfig(data_dir=str(synth_data), store=url, windows=(10, 30), extra_arrays=extra,
                          chunk_rows=8, workers=2))
    return url


@pytest.mark.parametrize("name", PUBLIC)
def test_public_recipe_plans(name, public_store):
    from typer.testing import CliRunner

    from hms_train.cli import app

    result = CliRunner().invoke(app, ["plan", "--config", name, "--store", public_store, "--json",
                                      "--set", "folds=[0]", "--set", "pretrained=false",
                                      "--set", "batch_size=4"])
    assert result.exit_code == 0, result.output
    planned = json.loads(result.output)
    config = load_config(name)
    assert [len(f["stages"]) for f in planned["folds"]] == [1 if config.stage2_epochs == 0 else 2]
    expected = {"public_lb31_b0": [1, 800, 700], "public_fh_ke": [1, 800, 300], "public_fh_k": [1, 400, 300]}
    if name in expected:
        assert planned["image_shape"] == expected[name]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["public_fh_k", "public_timm_b0"])  # the 1D net and LB31 train in the
# toy seed chain (tests/test_seed_chain.py); the WaveNet's forward shapes are tested above (its CPU cost)
def test_public_recipe_trains_one_step(name, public_store, tmp_path):
    config = load_config(name)
    tiny = ["model.pretrained=false", 'model.backbone="mobilenetv3_small_050"'] if "backbone" in config.model.kwargs() else []
    summary = train(load_config(name, [f'store="{public_store}"', *TOY, *tiny]), tmp_path / name, quiet=True)
    assert np.isfinite(summary["kl"]) and (tmp_path / name / "fold0_best.pt").is_file()


def test_make_seed_gives_the_public_runs_the_seed_blends_shares():
    """scripts/seed.sh PUBLIC_PAIRS are hms_train/run/blend.py SEED_BLEND's leaf weights (to 6 digits)."""
    import re

    from conftest import ROOT
    from hms_train.run.blend import SEED_BLEND

    script = (ROOT / "scripts" / "seed.sh").read_text()
    pairs = re.search(r'PUBLIC_PAIRS="([^"]*)"', script).group(1).replace("\\\n", " ").split()
    shares = {name: float(weight) for name, weight in (pair.split(":") for pair in pairs)}
    leaves = {name: share for name, share in SEED_BLEND.leaf_weights().items() if name.startswith("public_")}
    assert shares.keys() == leaves.keys() == set(PUBLIC)
    for name, share in leaves.items():
        assert shares[name] == pytest.approx(share, rel=1e-5), name


@pytest.mark.parametrize("name, blocks", [("public_lb31_b0", 16), ("public_fh_k", 23), ("public_fh_ker", 23)])
def test_keras_efficientnets_keep_their_drop_connect_ramp(name, blocks):
    """LB31's efn.EfficientNetB0 (efficientnet 1.1.1) and the features-head EfficientNetB2 (Keras) were built
    with drop_connect_rate 0.2: block b of the `blocks` drops its residual branch with p 0.2 * b / blocks,
    on the blocks with an identity skip only (efficientnet/model.py mb_conv_block). The recipes' backbones
    carry the same rates (timm's drop_path_rate ramp)."""
    config = load_config(name)
    kwargs = {**config.model.kwargs(), "pretrained": False}
    kind = kwargs.pop("name", config.model.name)
    inputs = {"resized_2d": {"image_size": [800, 700]}, "features_head_spec": {"image_size": [400, 300]},
              "features_head_hybrid": {"image_size": [800, 300]}}[kind]
    model = create_model(kind, **{**kwargs, **inputs})
    backbone = model.net.backbone if kind == "resized_2d" else model.spec.backbone
    found = [block for stage in backbone.blocks for block in stage]
    assert len(found) == blocks
    skips = [(index, block.drop_path) for index, block in enumerate(found) if block.has_skip]  # timm: others never drop
    assert len(skips) == {16: 9, 23: 16}[blocks]
    assert [getattr(drop, "drop_prob", 0.0) for _, drop in skips] == pytest.approx([0.2 * i / blocks for i, _ in skips])


LRFN = [1e-3, 1e-3, 1e-3, 1e-4, 1e-4, 1e-4, 1e-5, 1e-5, 1e-5]  # E/HMS_LB31.ipynb cell 16 lrfn's lr_schedule


@pytest.mark.parametrize("name", ["public_lb31_b0", "public_fh_k", "public_fh_r", "public_fh_ker"])
def test_lb31_and_features_head_step_their_learning_rate_as_lrfn(name):
    """Keras' LearningRateScheduler(lrfn) sets lrfn(epoch) at each epoch of each model.fit: both stages
    run lrfn's first 4 epochs (1e-3, 1e-3, 1e-3, 1e-4), and longer runs follow the rest of its list."""
    from hms_train.run.schedule import epoch_learning_rates

    config = load_config(name)
    assert epoch_learning_rates(config, config.lr, config.epochs, steps_per_epoch=5) == pytest.approx(LRFN[:4])
    assert epoch_learning_rates(config, config.stage2_lr, config.stage2_epochs, 5) == pytest.approx(LRFN[:4])
    assert epoch_learning_rates(config, config.lr, 9, 5) == pytest.approx(LRFN)


def test_timm_b1_trains_with_the_notebooks_adamw_betas():
    """T/ optim.AdamW(..., betas=(0.5, 0.999)) (docs/recipes.md); the loop's own optimizer carries them,
    other AdamW recipes keep (0.9, 0.999), and Lion refuses the key in one line."""
    from hms_train.run.config_values import ConfigError
    from hms_train.run.parts import training_parts

    def betas(name: str) -> tuple:
        config = load_config(name)
        return training_parts(config, torch.nn.Linear(2, 2), config.lr, 1, 1, with_ema=False).optimizer.param_groups[0]["betas"]

    assert tuple(betas("public_timm_b1")) == tuple(betas("public_timm_b0")) == (0.5, 0.999)
    assert tuple(betas("public_lb31_b0")) == (0.9, 0.999)
    with pytest.raises(ConfigError, match="adam_beta1"):
        load_config("seed_david_b0", ["adam_beta1=0.5"])


def test_resnet1d_gru_restarts_its_cosine_every_20_batches_as_the_notebook():
    """T/ CosineAnnealingWarmRestarts(T_0=20, eta_min=1e-6) with scheduler.step() after every batch
    (batch_scheduler): the loop's scheduler gives torch's rate at every step, across restarts."""
    from hms_train.run.config_values import ConfigError
    from hms_train.run.parts import training_parts

    config = load_config("public_resnet1d_gru")
    model = torch.nn.Linear(2, 2)
    ours = training_parts(config, model, config.lr, config.epochs, steps_per_epoch=7, with_ema=False)
    reference = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=config.lr)
    torch_schedule = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(reference, T_0=20, eta_min=1e-6)
    for step in range(1, 65):
        ours.scheduler.step_update(step)
        torch_schedule.step()
        assert ours.optimizer.param_groups[0]["lr"] == pytest.approx(reference.param_groups[0]["lr"], rel=1e-9, abs=1e-12), step
    with pytest.raises(ConfigError, match="cosine_cycle_steps"):
        load_config("public_resnet1d_gru", ['schedule_unit="epoch"'])
