"""`hms-train bench` with a recipe: the image shape comes from the recipe's layout, and `--train` times a
real training step of the recipe's model (random initialisation) on the store's batches."""

import json

import pytest
import torch
from typer.testing import CliRunner

from hms_train.run.bench import run_bench, run_train_bench
from hms_train.cli import app
from hms_train.run.config import load_config

TINY = ['model.backbone="mobilenetv3_small_050"', "model.pool=\"avg\"", "batch_size=4"]


def test_bench_with_a_config_reports_its_layouts_image_shape(train_store):
    torch.set_num_threads(1)
    config = load_config("smoke", TINY)
    result = run_bench(train_store, batch_size=4, batches=1, device="cpu", augment=True, threads=1, config=config)
    assert result["image_shape"] == [1, 400, 256]  # smoke: the 10 s window alone
    assert result["samples_per_s_augmented"] > 0


def test_train_bench_reports_model_data_and_loop_rates(train_store):
    torch.set_num_threads(1)
    config = load_config("smoke", TINY)
    result = run_train_bench(config, train_store, batches=2, device="cpu", threads=1)
    for key in ("model_images_per_s", "data_samples_per_s", "train_images_per_s", "data_over_model"):
        assert result[key] > 0
    assert 0 < result["gpu_busy"] <= 1
    assert result["image_shape"] == [1, 400, 256] and result["batch_size"] == 4
    assert result["dtype"] == "float32" and result["compiled"] is False


def test_cli_bench_train_needs_a_config_and_prints_json(train_store):
    runner = CliRunner()
    refused = runner.invoke(app, ["bench", "--store", train_store, "--train", "--device", "cpu"])
    assert refused.exit_code == 1 and "--config" in refused.output
    args = ["bench", "--store", train_store, "--config", "smoke", "--device", "cpu", "--batches", "1",
            "--threads", "1", "--json"] + [f"--set={item}" for item in TINY]
    result = runner.invoke(app, args + ["--train"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["image_shape"] == [1, 400, 256]
    bad = runner.invoke(app, ["bench", "--store", train_store, "--config", "smoke", "--set", "lr=abc"])
    assert bad.exit_code == 1 and "lr" in bad.output


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_train_bench_on_cuda_uses_bf16_and_channels_last(train_store):
    result = run_train_bench(load_config("smoke", TINY), train_store, batches=2, device="cuda", threads=2)
    assert result["dtype"] == "bfloat16" and result["channels_last"] is True
