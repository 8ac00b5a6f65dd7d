"""TrainConfig is checked whole, before any work: types, choices, ranges, nested sections, TOML files,
and what only the store can tell (folds, inputs). Errors name the key and what is allowed."""

import sys

import pytest
from conftest import ROOT
from typer.testing import CliRunner

from hms_train.image.augment import AUGMENTATIONS
from hms_train.model.kinds import MODELS
from hms_train.cli import app
from hms_train.run.config import TrainConfig, bundled_configs, check_folds, load_config
from hms_train.run.config_values import ConfigError


@pytest.mark.parametrize("name", bundled_configs())
def test_every_bundled_config_passes_the_checks(name):
    assert isinstance(load_config(name), TrainConfig)


def test_values_are_typed_as_declared():
    config = load_config("smoke", ["lr=1", "augment.xy_mask.stripes=[2, 4]", "seed=5"])
    assert config.lr == 1.0 and isinstance(config.lr, float)
    assert config.augment.steps["xy_mask"].stripes == (2, 4) and config.seed == 5
    assert TrainConfig.from_dict(config.to_dict()) == config
    # the flat keys of earlier configs (a run folder's config.json, `--set augment.mixup_p=0`) still read
    old = load_config("smoke", ["augment.mask_stripes=[3, 5]", "augment.mixup_p=0.25", "augment.brightness=0.4"])
    steps = old.augment.steps
    assert steps["xy_mask"].stripes == (3, 5) and steps["mixup"].p == 0.25
    assert steps["brightness_contrast"].brightness == 0.4


@pytest.fixture
def extra_model_plugin(monkeypatch):
    """tests/plugins/extra_model.py importable; what its import registers here is dropped afterwards, so that
    later tests of this process see the registries they expect (e.g. the list of model kinds in a message)."""
    monkeypatch.syspath_prepend(str(ROOT / "tests" / "plugins"))
    before = {registry: set(registry) for registry in (AUGMENTATIONS, MODELS)}
    imported = "extra_model" in sys.modules
    yield
    for registry, names in before.items():
        for name in set(registry) - names:
            registry.unregister(name)
    if not imported:
        sys.modules.pop("extra_model", None)


def test_a_plugin_loaded_earlier_in_the_process_stays_out_of_another_runs_config(extra_model_plugin):
    """A notebook (or a test worker) that once loaded a plug-in trains a recipe without it: its config.json
    must be what a fresh process writes, or `--resume` there refuses the plug-in's unknown augmentation."""
    fresh = load_config("smoke").to_dict()
    load_config("smoke", ['plugins=["extra_model"]', "augment.negate.p=0.5"])  # registers negate, mirror_blend
    assert "negate" in AUGMENTATIONS
    assert load_config("smoke").to_dict() == fresh
    with_plugin = load_config("smoke", ['plugins=["extra_model"]', "augment.negate.p=0.5"]).to_dict()
    assert with_plugin["augment"]["negate"] == {"p": 0.5}  # a plug-in's step the run uses is recorded
    assert TrainConfig.from_dict(with_plugin).augment.steps["negate"].p == 0.5


def test_the_model_is_a_table_of_its_kinds_settings():
    config = load_config("smoke", ["model.drop_rate=0.3"])
    assert config.model.name == "2d" and config.model.kwargs()["backbone"] == "mobilenetv3_small_050"
    assert config.model.kwargs()["drop_rate"] == 0.3 and config.to_dict()["model"]["drop_rate"] == 0.3
    assert TrainConfig.from_dict(config.to_dict()) == config
    # a kind's name alone is that kind with its defaults; `model.KEY` after it sets one of its settings
    raw = load_config("smoke", ['model="1d"', "model.drop_rate=0.4"]).model
    assert (raw.name, raw.kwargs()) == ("1d", {"drop_rate": 0.4})
    # a run folder's config.json of before the table: flat keys, those of another kind left out as before
    old = {**{k: v for k, v in config.to_dict().items() if k != "model"}, "model": "1d", "backbone": "x",
           "pretrained": False, "drop_rate": 0.1}
    assert TrainConfig.from_dict(old).model.kwargs() == {"drop_rate": 0.1}


@pytest.mark.parametrize("override, message", [
    ("lr=abc", "lr: expected a number, got 'abc'"),
    ("batch_size=1.5", "batch_size: expected an integer, got 1.5"),
    ("amp=1", "amp: expected true or false, got 1"),
    ("folds=0", "folds: expected a list, got 0"),
    ('inputs=["eeg_10s", 3]', "inputs: expected a string, got 3"),
    ('model="3d"', "model.name: '3d' is not a registered model kind; registered: ['1d', '2d', 'features_head_hybrid', 'features_head_spec', 'features_head_wave', 'multimodal', 'resized_2d', 'resnet1d_gru']"),
    ('model.name="3d"', "model.name: '3d' is not a registered model kind; registered: ['1d', '2d', 'features_head_hybrid', 'features_head_spec', 'features_head_wave', 'multimodal', 'resized_2d', 'resnet1d_gru']"),
    ('model.pool="max"', "model.pool: 'max' is not allowed; expected one of ['avg', 'gem', 'attention']"),
    ('pool="max"', "model.pool: 'max' is not allowed; expected one of ['avg', 'gem', 'attention']"),  # the old key
    ("model.channels=16", "model.channels: model kind '2d' has no setting 'channels'; it takes ['backbone', "
                          "'conv_head', 'drop_path_rate', 'drop_rate', 'dropout_at', 'net_form', 'pool', 'pretrained', "
                          "'weights']"),
    ("model.drop_rate=1.5", "model.drop_rate: 1.5 is out of range; allowed [0, 1]"),
    ("model.conv_head=3", "model.conv_head: expected true or false, got 3"),
    ("model.image_size=[8, 8]", "model.image_size: planned from the layout and the store, not a setting"),
    ("model=3", "model: expected a model kind's name or a table [model], got 3"),
    ('optimizer="sgd"', "optimizer: 'sgd' is not allowed; expected one of ['adamw', 'lion']"),
    ('pseudo_mode="mix"', "pseudo_mode: 'mix' is not allowed; expected one of ['replace', 'blend']"),
    ('vote_weighting="sqrt"', "vote_weighting: 'sqrt' is not allowed; expected one of ['none', 'linear', 'log']"),
    ('device="gpu"', "device: 'gpu' is not allowed; expected auto, cpu, cuda or cuda:N"),
    ("epochs=0", "epochs: 0 is out of range; allowed (0, inf]"),
    ("lr=-1e-3", "lr: -0.001 is out of range; allowed (0, inf]"),
    ("pseudo_blend=1.5", "pseudo_blend: 1.5 is out of range; allowed [0, 1]"),
    ("folds=[-1]", "folds: -1 is out of range; allowed [0, inf]"),
    ("folds=[0, 0]", "folds: expected distinct fold numbers"),
    ("augment.mixup.p=2", "augment.mixup.p: 2.0 is out of range; allowed [0, 1]"),
    ("augment.mixup_p=2", "augment.mixup.p: 2.0 is out of range; allowed [0, 1]"),
    ("augment.xy_mask.width=[5]", "augment.xy_mask.width: expected 2 values, got [5]"),
    ("augment.mixup.rotate=1", "unknown MixupSettings field(s) ['augment.mixup.rotate']"),
    ("augment.spin.p=1", "unknown augmentation(s) ['augment.spin']; registered:"),
    ("augment.rotate=1", "unknown augmentation augment.rotate; registered:"),
    ("augment=3", "augment: expected a section (table), got 3"),
    ("augment.random_crop_width=8", "augment.random_crop_width was removed: the Kaggle part's width"),
    ("kaggle_width=8", "kaggle_width was removed: set the Kaggle part's width in the recipe's [layout]"),
    ('pseudo_labels="p.parquet"', "pseudo_labels: used in stage 2, but stage2_epochs = 0"),
])
def test_bad_values_name_the_key_and_the_allowed_values(override, message):
    overrides = [override, "stage2_epochs=0"] if override.startswith("pseudo_labels") else [override]
    with pytest.raises(ConfigError) as caught:
        load_config("smoke", overrides)
    assert message in str(caught.value)


def test_nested_sections_are_checked_generically():
    # every registered augmentation's probability `p` is checked as one, whatever the step
    for name in AUGMENTATIONS:
        with pytest.raises(ConfigError, match=f"augment.{name}.p: -0.1 is out of range"):
            TrainConfig.from_dict({"inputs": ["eeg_10s"], "augment": {name: {"p": -0.1}}})


def test_a_bad_toml_file_is_reported_with_its_path_and_line(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('lr = 1e-3\nepochs = = 2\n')
    with pytest.raises(ConfigError, match=r"bad.toml: not valid TOML: .*line 2"):
        load_config(str(path))
    path.write_text('lr = "fast"\n')
    with pytest.raises(ConfigError, match="lr: expected a number, got 'fast'"):
        load_config(str(path))


def test_store_checks_folds():
    config = load_config("smoke", ["folds=[0, 5]"])
    with pytest.raises(ConfigError, match=r"folds: \[5\] out of range; .* has folds 0..4"):
        check_folds(config, n_folds=5)
    check_folds(load_config("smoke", ["folds=[4]"]), n_folds=5)


def test_cli_reports_config_errors_in_one_line(tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["train", "--config", "smoke", "--set", "lr=abc", "--out", str(tmp_path / "r")])
    assert result.exit_code == 1 and result.output.strip() == "error: lr: expected a number, got 'abc'"
    assert not (tmp_path / "r").exists(), "nothing written before the checks"
    result = runner.invoke(app, ["train", "--config", str(tmp_path / "missing.toml")])
    assert result.exit_code == 1 and "no config" in result.output


def test_version():
    import subprocess
    import sys

    from conftest import ROOT

    result = subprocess.run([sys.executable, "-m", "hms_train.cli", "--version"], cwd=ROOT, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.startswith("hms-train "), result.stderr


def test_cli_error_boundary_keeps_tracebacks_of_unexpected_errors():
    import torch
    import typer

    from hms_prep.store.layout import StoreError
    from hms_train.cli import _user_errors
    from hms_train.model.backbones import MissingWeightsError

    for expected in (ConfigError("lr: bad"), ValueError("bad"), FileNotFoundError("gone"), StoreError("old"),
                     MissingWeightsError("no weights")):
        with pytest.raises(typer.Exit):
            with _user_errors():
                raise expected
    for unexpected in (TypeError("a bug"), KeyError("a bug"), torch.OutOfMemoryError("CUDA out of memory"),
                       RuntimeError("shape mismatch")):
        with pytest.raises(type(unexpected)):
            with _user_errors():
                raise unexpected


def test_a_mistyped_recipe_or_key_gets_a_did_you_mean():
    from hms_train.run.config import load_config
    from hms_train.run.config_values import ConfigError

    with pytest.raises(FileNotFoundError, match=r"^no config 'smok' \(did you mean 'smoke'\?\): not a file"):
        load_config("smok")
    with pytest.raises(ConfigError, match=r"unknown TrainConfig field\(s\) \['lrr'\] \(did you mean 'lr'\?\); known"):
        load_config("smoke", ["lrr=1e-3"])
    with pytest.raises(ConfigError, match=r"\['zzzz'\]; known"):  # nothing close: no guess
        load_config("smoke", ["zzzz=1"])


def test_every_set_example_in_the_help_and_the_docs_parses(extra_model_plugin):
    """`--set key=value` as hms_train/cli.py's help, README.md and docs/*.md show it: each parses against
    today's config (a renamed key once stayed in the help as `augment.mixup_p`)."""
    import re
    import shlex

    from hms_train.run.config import load_config

    from conftest import ROOT

    texts = [ROOT / "hms_train" / "cli.py", ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    examples = {(path.name, m.group(1)) for path in texts
                for m in re.finditer(r"--set[ =]((?:'[^']*'|[^\s`'])+)", path.read_text())}
    checked = 0
    for name, text in sorted(examples):
        text = text.rstrip(").,`")
        if text.count("]") > text.count("["):  # the bracket of an optional option in a synopsis
            text = text[:-1]
        try:
            (item,) = shlex.split(text)
        except ValueError:  # the closing quote of the help's string: augment.mixup.p=0."
            (item,) = shlex.split(text.rstrip('"').rstrip(".,)"))
        if item.split("=")[0] in ("key", "k"):  # the syntax's placeholders
            continue
        # architecture.md's plug-in model example (tests/plugins/extra_model.py's tiny_conv)
        plugin = ['plugins=["extra_model"]', 'model="tiny_conv"'] if item.startswith("model.channels=") else []
        load_config("smoke", [*plugin, item])  # raises ConfigError naming the key
        checked += 1
    assert checked >= 10, examples
