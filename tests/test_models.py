"""Shapes, pooling semantics and weight loading of hms_train.model.models (random init, small images, CPU)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import safetensors.torch
import timm
import torch

from hms_train.model.backbones import AttentionPool, GeM, timm_backbone
from hms_train.model.kinds import create_model
from hms_train.model.models import DROPOUT_PLACES, model_inputs, MultimodalNet, RawEEGNet, SpectrogramNet

IMAGE_SIZE = (128, 160)  # feature map 4 x 5 for stride-32 backbones
REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def image() -> torch.Tensor:
    return torch.randn(2, 1, *IMAGE_SIZE, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def efficientnet() -> SpectrogramNet:
    return create_model("2d", backbone="efficientnet_b0", pool="attention", image_size=IMAGE_SIZE).eval()


@pytest.mark.parametrize("backbone", ["efficientnet_b0", "mobilenetv3_large_100"])
@pytest.mark.parametrize("pool", ["avg", "gem", "attention"])
def test_spectrogram_net_shapes(backbone, pool, image):
    model = create_model("2d", backbone=backbone, pool=pool, image_size=IMAGE_SIZE).eval()
    assert isinstance(model, SpectrogramNet)
    with torch.no_grad():
        logits = model(image)
        features = model.features(image)
    assert logits.shape == (2, 6)
    assert features.shape == (2, 1280)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("backbone, channels", [("convnext_base", 1024), ("tf_efficientnetv2_s", 1280)])
def test_large_backbones_construct(backbone, channels):
    model = create_model("2d", backbone=backbone, image_size=IMAGE_SIZE)
    assert model.num_features == channels
    assert model.pool.width == 5
    assert model.training  # the dry forward pass at build restores train mode


def test_mobilenet_without_conv_head_ends_at_960_channels(image, tmp_path):
    # David_src/model.py:85-87: torchvision's mobilenet_v3_large features, cnn_ch = 960
    model = create_model("2d", backbone="mobilenetv3_large_100", pool="avg", conv_head=False,
                         image_size=IMAGE_SIZE).eval()
    assert model.num_features == 960 and model.head.in_features == 960
    with torch.no_grad():
        assert model.backbone(image).shape == (2, 960, 4, 5)
    assert not any(name.startswith("conv_head") for name, _ in model.backbone.named_parameters())
    # a full timm state dict loads first, then the conv_head goes
    torch.manual_seed(5)
    state = timm.create_model("mobilenetv3_large_100", pretrained=False).state_dict()
    torch.save(state, tmp_path / "mnv3.pth")
    loaded = create_model("2d", backbone="mobilenetv3_large_100", pool="avg", conv_head=False,
                          image_size=IMAGE_SIZE, weights=str(tmp_path / "mnv3.pth"))
    assert torch.equal(loaded.backbone.blocks[6][0].conv.weight, state["blocks.6.0.conv.weight"])
    with pytest.raises(ValueError, match="efficientnet_b0 has none outside its features"):
        create_model("2d", backbone="efficientnet_b0", conv_head=False, image_size=IMAGE_SIZE)


def test_efficientnet_drop_path_ramps_like_torchvision():
    # David_src/model.py:67 keeps torchvision efficientnet_b0's stochastic_depth_prob 0.2: 0.2 * i / 16
    import torchvision

    model = create_model("2d", backbone="efficientnet_b0", pool="avg", drop_path_rate=0.2, image_size=IMAGE_SIZE)
    ours = [block.drop_path.drop_prob if hasattr(block.drop_path, "drop_prob") else 0.0
            for stage in model.backbone.blocks for block in stage]
    theirs = [block.stochastic_depth.p for stage in torchvision.models.efficientnet_b0().features[1:8] for block in stage]
    assert ours == pytest.approx(theirs) and theirs[-1] == pytest.approx(0.1875)


@pytest.mark.parametrize("dropout_at", DROPOUT_PLACES)
def test_dropout_acts_where_asked(dropout_at, image):
    model = create_model("2d", backbone="efficientnet_b0", pool="attention", drop_rate=0.5, dropout_at=dropout_at,
                         image_size=IMAGE_SIZE).train()
    seen = {}
    model.backbone.register_forward_hook(lambda module, args, out: seen.update(map=out))
    model.pool.register_forward_hook(lambda module, args, out: seen.update(pool_in=args[0], pooled=out))
    model.head.register_forward_hook(lambda module, args, out: seen.update(head_in=args[0]))
    model(image)
    map_dropped = not torch.equal(seen["pool_in"], seen["map"])
    pooled_dropped = not torch.equal(seen["head_in"], seen["pooled"])
    assert (map_dropped, pooled_dropped) == (dropout_at == "map", dropout_at == "pooled")
    before, after = ("map", "pool_in") if dropout_at == "map" else ("pooled", "head_in")
    kept = seen[after] != 0
    assert 0.3 < kept.float().mean() < 0.7  # element-wise, p 0.5 (Richard's F.dropout on the 4-D map)
    assert torch.allclose(seen[after][kept], 2 * seen[before][kept])
    model.eval()
    with torch.no_grad():
        model(image)
    assert torch.equal(seen["pool_in"], seen["map"]) and torch.equal(seen["head_in"], seen["pooled"])


def test_checkpoints_written_before_the_new_model_options_still_load(tmp_path, image):
    from hms_train.run.checkpoint import load_fold_model
    from hms_train.run.config import TrainConfig

    old_spec = {"name": "2d", "kwargs": {"backbone": "mobilenetv3_large_100", "pool": "avg", "drop_rate": 0.2,
                                         "drop_path_rate": 0.0, "pretrained": False, "weights": None,
                                         "image_size": list(IMAGE_SIZE)}}
    model = create_model(old_spec["name"], **old_spec["kwargs"]).eval()
    assert model.num_features == 1280 and model.dropout_at == "pooled"  # timm's conv_head, as before
    old_config = {k: v for k, v in TrainConfig(inputs=["eeg_10s"]).to_dict().items() if k not in ("dropout_at", "conv_head")}
    torch.save({"model_spec": old_spec, "model": model.state_dict(), "config": old_config}, tmp_path / "fold0_best.pt")
    loaded = load_fold_model(tmp_path / "fold0_best.pt", torch.device("cpu"))
    with torch.no_grad():
        assert torch.equal(loaded.model(image), model(image))


def test_build_leaves_batchnorm_statistics_untouched():
    model = create_model("2d", backbone="efficientnet_b0", pool="avg", image_size=IMAGE_SIZE)
    assert model.backbone.bn1.num_batches_tracked.item() == 0
    assert torch.equal(model.backbone.bn1.running_mean, torch.zeros_like(model.backbone.bn1.running_mean))


def test_attention_pool_width_is_checked(efficientnet):
    assert efficientnet.pool.width == 5
    wider = torch.randn(1, 1, IMAGE_SIZE[0], IMAGE_SIZE[1] + 64)
    with pytest.raises(ValueError, match="5 columns wide but got 7"):
        efficientnet(wider)


def constant_column_pool(feature_map: torch.Tensor, column_bias: torch.Tensor) -> torch.Tensor:
    """AttentionPool output when the column weights are fixed by the Linear's bias alone."""
    channels, width = feature_map.shape[1], feature_map.shape[3]
    pool = AttentionPool(channels, width).eval()
    with torch.no_grad():
        pool.column_logits.weight.zero_()
        pool.column_logits.bias.copy_(column_bias)
        return pool(feature_map)


def test_attention_pool_weights_columns():
    feature_map = torch.randn(3, 8, 4, 5, generator=torch.Generator().manual_seed(1))
    closed = constant_column_pool(feature_map, torch.full((5,), -50.0))
    assert torch.allclose(closed, torch.zeros(3, 8), atol=1e-12)
    opened = constant_column_pool(feature_map, torch.full((5,), 50.0))
    assert torch.allclose(opened, feature_map.mean(dim=(2, 3)), atol=1e-6)
    # Only column 2 open: the pool sees that column alone, still divided by all W * H positions.
    only_third = constant_column_pool(feature_map, torch.tensor([-50.0, -50.0, 50.0, -50.0, -50.0]))
    assert torch.allclose(only_third, feature_map[..., 2].mean(dim=2) / 5, atol=1e-6)


def test_gem_with_p_one_is_average_pooling():
    feature_map = torch.rand(2, 8, 4, 5, generator=torch.Generator().manual_seed(2)) + 0.1
    gem = GeM()
    assert gem.p.item() == pytest.approx(3.0)
    assert gem(feature_map).shape == (2, 8)
    assert (gem(feature_map) > feature_map.mean(dim=(2, 3))).all()  # p > 1 leans towards the max
    with torch.no_grad():
        gem.p.fill_(1.0)
    assert torch.allclose(gem(feature_map), feature_map.mean(dim=(2, 3)), atol=1e-6)


def test_raw_eeg_net_on_fifty_seconds():
    model = create_model("1d", raw_channels=18, raw_samples=10000).eval()
    assert isinstance(model, RawEEGNet)
    raw = 10 * torch.randn(2, 18, 10000, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert model(raw).shape == (2, 6)
        assert model.features(raw).shape == (2, model.num_features)
        # stem /2 then four stride-2 blocks: 10000 -> 313 steps for the GRU
        assert model.blocks(model.stem(raw)).shape == (2, 64, 313)
    with pytest.raises(ValueError, match="18 signals but got 16"):
        model(raw[:, :16])


def test_raw_eeg_net_trains():
    model = create_model("1d", raw_channels=16, raw_samples=2000)
    logits = model(torch.randn(4, 16, 2000))
    logits.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    assert model.stem[0].weight.grad.abs().sum() > 0


def test_multimodal_forward(image):
    model = create_model("multimodal", image_size=IMAGE_SIZE, raw_channels=16).eval()
    assert isinstance(model, MultimodalNet)
    assert model.head.in_features == 1280 + model.raw.num_features
    raw = torch.randn(2, 16, 10000)
    with torch.no_grad():
        assert model(image, raw).shape == (2, 6)
    assert model_inputs("multimodal") == ("image", "signals")
    assert model_inputs("2d") == ("image",)
    assert model_inputs("1d") == ("signals",)


def test_unknown_names_are_refused():
    with pytest.raises(ValueError, match="unknown model kind"):
        create_model("3d")
    with pytest.raises(ValueError, match="unknown pool"):
        create_model("2d", pool="max", image_size=IMAGE_SIZE)
    with pytest.raises(ValueError, match="'1d' has none"):
        create_model("1d", pretrained=True)


def imagenet_efficientnet_state() -> dict[str, torch.Tensor]:
    """A 3-channel, 1000-class efficientnet_b0 state dict standing in for downloaded ImageNet weights."""
    torch.manual_seed(4)
    return timm.create_model("efficientnet_b0", pretrained=False).state_dict()


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_local_weights_round_trip(tmp_path, suffix):
    state = imagenet_efficientnet_state()
    assert state["conv_stem.weight"].shape[1] == 3 and "classifier.weight" in state
    path = tmp_path / f"efficientnet_b0{suffix}"
    if suffix == ".safetensors":
        safetensors.torch.save_file(state, str(path))
    else:
        torch.save(state, path)
    model = create_model("2d", backbone="efficientnet_b0", image_size=IMAGE_SIZE, weights=str(path))
    loaded = model.backbone.state_dict()
    assert torch.allclose(loaded["conv_stem.weight"], state["conv_stem.weight"].sum(dim=1, keepdim=True))
    assert torch.equal(loaded["blocks.3.0.conv_pw.weight"], state["blocks.3.0.conv_pw.weight"])
    assert torch.equal(loaded["bn2.running_var"], state["bn2.running_var"])


def test_weights_for_another_architecture_fail_loudly(tmp_path):
    path = tmp_path / "mobilenet.pth"
    torch.save(timm.create_model("mobilenetv3_large_100", pretrained=False).state_dict(), path)
    with pytest.raises(RuntimeError, match="Error\\(s\\) in loading state_dict"):
        create_model("2d", backbone="efficientnet_b0", image_size=IMAGE_SIZE, weights=str(path))


def write_hub_cache(hf_home: Path, repo_id: str, state: dict[str, torch.Tensor]) -> None:
    """Lay out `state` as model.safetensors in a Hugging Face hub cache, as a past download would."""
    repo = hf_home / "hub" / f"models--{repo_id.replace('/', '--')}"
    commit = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    safetensors.torch.save_file(state, str(snapshot / "model.safetensors"))


def test_pretrained_reads_the_local_cache_only(tmp_path):
    # huggingface_hub fixes its cache path at import, so the check runs in a fresh interpreter.
    state = imagenet_efficientnet_state()
    write_hub_cache(tmp_path, timm.models.get_pretrained_cfg("efficientnet_b0").hf_hub_id, state)
    torch.save(state["conv_stem.weight"].sum(dim=1, keepdim=True), tmp_path / "expected_stem.pt")
    script = textwrap.dedent(
        f"""
        import torch
        from hms_train.model.kinds import create_model
        model = create_model("2d", backbone="efficientnet_b0", pretrained=True, image_size={IMAGE_SIZE})
        expected = torch.load({str(tmp_path / "expected_stem.pt")!r})
        assert torch.allclose(model.backbone.conv_stem.weight, expected), "cached weights not loaded"
        try:
            create_model("2d", backbone="mobilenetv3_large_100", pretrained=True, image_size={IMAGE_SIZE})
        except RuntimeError as error:
            print(error)
        """
    )
    env = {
        **os.environ,
        "HF_HOME": str(tmp_path),
        "TORCH_HOME": str(tmp_path / "torch"),
        "OMP_NUM_THREADS": "1",
    }
    env.pop("HF_HUB_OFFLINE", None)  # create_model must go offline by itself
    env.pop("HF_HUB_CACHE", None)
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert (
        "no pretrained weights for mobilenetv3_large_100 in the local cache; pass --weights PATH"
        in result.stdout
    )


def test_create_model_refuses_arguments_a_kind_does_not_take():
    with pytest.raises(ValueError, match=r"model kind '2d' got argument\(s\) \['raw_channels'\]"):
        create_model("2d", image_size=IMAGE_SIZE, raw_channels=18)
    with pytest.raises(ValueError, match=r"model kind '2d' needs argument\(s\) \['image_size'\]"):
        create_model("2d")


def test_a_registered_kind_declares_its_inputs_and_runs_by_keyword(image):
    from hms_train.run.forward import run_model
    from hms_train.model.kinds import MODELS, register_model

    @register_model("test_mean", inputs=("image",))
    def mean_model(scale: float = 1.0) -> torch.nn.Module:
        class Mean(torch.nn.Module):
            def forward(self, image):
                return scale * image.mean(dim=(1, 2, 3))[:, None].expand(-1, 6)

        return Mean()

    try:
        assert model_inputs("test_mean") == ("image",)
        model = create_model("test_mean", scale=2.0)
        assert torch.allclose(run_model(model, {"image": image}), 2 * image.mean(dim=(1, 2, 3))[:, None].expand(-1, 6))
        with pytest.raises(ValueError, match="registered twice"):
            register_model("test_mean", inputs=("image",))(mean_model)
    finally:
        MODELS.unregister("test_mean")


def test_convnext_pools_then_normalises_as_timms_own_model():
    """seed_richard_convnext is "a plain timm ConvNeXt" (R/Valid.ipynb c1: `x = self.model(image)` on
    timm.create_model(..., num_classes=6, drop_rate=...)): its head pools, then LayerNorms the vector,
    drops out and applies fc. With the same weights, ours gives timm's logits; normalising every position
    of the map before the pool (the head this project had) gives others."""
    torch.manual_seed(0)
    ours = SpectrogramNet(timm_backbone("convnext_atto"), (64, 96), pool="avg", drop_rate=0.3, dropout_at="pooled")
    with torch.no_grad():  # a head norm unlike the identity it starts as, so that its place shows
        ours.backbone.head.norm.weight.uniform_(0.5, 2.0)
        ours.backbone.head.norm.bias.uniform_(-1.0, 1.0)
    theirs = timm.create_model("convnext_atto", in_chans=1, num_classes=6, drop_rate=0.3)
    state = {k: v for k, v in ours.backbone.state_dict().items()}
    state.update({"head.fc.weight": ours.head.weight, "head.fc.bias": ours.head.bias})
    theirs.load_state_dict(state)
    ours.eval(), theirs.eval()
    image = torch.randn(2, 1, 64, 96)
    with torch.no_grad():
        torch.testing.assert_close(ours(image), theirs(image), rtol=1e-5, atol=1e-5)
        per_position = ours.head(ours.backbone(image).mean(dim=(2, 3)))  # norm, then pool
        assert (per_position - theirs(image)).abs().max() > 1e-2
    assert ours.norm_after_pool and not SpectrogramNet(timm_backbone("efficientnet_b0"), (64, 96)).norm_after_pool


@pytest.mark.parametrize("backbone, torchvision_name, stem_channels", [
    ("efficientnet_b0", "efficientnet_b0", 32), ("mobilenetv3_large_100", "mobilenet_v3_large", 16)])
def test_seed_exact_is_davids_torchvision_network_input(backbone, torchvision_name, stem_channels):
    """D/model.py: the first conv a new random nn.Conv2d(1, c0_ch, (17, 17), stride 2, padding 8, bias=False),
    torchvision's BatchNorm settings (read here from torchvision's own model), fc = Dropout(0.1),
    Linear(cnn_ch, 6, bias=False); the feature map keeps the size of the 3 x 3 stem's."""
    import torchvision

    reference = getattr(torchvision.models, torchvision_name)()
    settings = {(m.eps, m.momentum) for m in reference.modules() if isinstance(m, torch.nn.BatchNorm2d)}
    kwargs = dict(backbone=backbone, pool="avg", image_size=(64, 96), drop_rate=0.1,
                  conv_head=backbone.startswith("efficientnet"))
    torch.manual_seed(0)
    model = create_model("2d", net_form="seed_exact", **kwargs)
    stem = model.backbone.conv_stem
    assert (stem.in_channels, stem.out_channels, stem.kernel_size, stem.stride, stem.padding, stem.bias) == (
        1, stem_channels, (17, 17), (2, 2), (8, 8), None)
    assert {(m.eps, m.momentum) for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)} == settings
    assert model.head.bias is None
    timm_form = create_model("2d", **kwargs)
    assert timm_form.head.bias is not None and timm_form.backbone.conv_stem.kernel_size == (3, 3)
    image = torch.randn(2, 1, 64, 96)
    assert model.backbone(image).shape == timm_form.backbone(image).shape
    torch.manual_seed(1)
    assert not torch.equal(create_model("2d", net_form="seed_exact", **kwargs).backbone.conv_stem.weight, stem.weight)
    with pytest.raises(ValueError, match="seed_exact"):
        create_model("2d", net_form="seed_exact", backbone="resnet18", pool="avg", image_size=(64, 96))
