"""Composing the model image from store parts: layout, exact values, per-sample z-scoring of the parts
whose arrays ask for it."""

import pytest
import torch

from hms_train.image.compose import compose_image, side_by_side_layout

ZSCORED = {"kaggle": "zscore"}  # what the Kaggle array's attributes say


def labelled_part(batch: int, freqs: int, times: int, part_id: int) -> torch.Tensor:
    """(B, 4, F, T) whose every value encodes (part, sample, chain, frequency, time) uniquely
    (exact in float32 for B < 10, F < 100, T < 100, part_id < 10)."""
    b = torch.arange(batch).reshape(-1, 1, 1, 1)
    c = torch.arange(4).reshape(1, -1, 1, 1)
    f = torch.arange(freqs).reshape(1, 1, -1, 1)
    t = torch.arange(times).reshape(1, 1, 1, -1)
    return (part_id * 1e6 + b * 1e5 + c * 1e4 + f * 1e2 + t).float()


def test_eeg_parts_sit_side_by_side_with_chains_stacked():
    parts = {"eeg_10s": labelled_part(2, 5, 7, 1), "eeg_30s": labelled_part(2, 5, 3, 2)}
    image = compose_image(parts, ["eeg_30s", "eeg_10s"])
    assert image.shape == (2, 1, 20, 10)
    assert image.dtype == torch.float32
    for b in range(2):
        for c in range(4):
            rows = slice(c * 5, (c + 1) * 5)
            torch.testing.assert_close(image[b, 0, rows, 0:3], parts["eeg_30s"][b, c], rtol=0, atol=0)
            torch.testing.assert_close(image[b, 0, rows, 3:10], parts["eeg_10s"][b, c], rtol=0, atol=0)


def test_kaggle_part_is_standardised_per_sample_and_cut_for_evaluation():
    torch.manual_seed(0)
    eeg = torch.rand(3, 4, 6, 8) * 2 - 1
    kaggle = torch.rand(3, 4, 6, 12) * torch.tensor([1.0, 5.0, 20.0]).reshape(3, 1, 1, 1) + 3
    image = compose_image({"eeg_10s": eeg, "kaggle": kaggle}, ["eeg_10s", "kaggle"], ZSCORED)
    assert image.shape == (3, 1, 24, 20)
    torch.testing.assert_close(image[:, 0, :, :8], eeg.reshape(3, 24, 8), rtol=0, atol=0)
    kaggle_block = image[:, 0, :, 8:].reshape(3, -1)
    torch.testing.assert_close(kaggle_block.mean(dim=1), torch.zeros(3), rtol=0, atol=1e-5)
    torch.testing.assert_close(kaggle_block.std(dim=1, correction=0), torch.ones(3), rtol=0, atol=1e-4)
    # chain layout survives standardisation: same ordering of values within each chain block
    expected = (kaggle - kaggle.mean(dim=(1, 2, 3), keepdim=True)) / kaggle.std(dim=(1, 2, 3), keepdim=True, correction=0)
    torch.testing.assert_close(image[:, 0, :, 8:], expected.reshape(3, 24, 12), rtol=0, atol=1e-4)

    evaluation = compose_image({"eeg_10s": eeg, "kaggle": kaggle}, ["eeg_10s", "kaggle"], ZSCORED, widths={"kaggle": 5})
    assert evaluation.shape == (3, 1, 24, 13)
    # standardised over the whole block first, then cut: the same columns as in training
    torch.testing.assert_close(evaluation, image[..., :13], rtol=0, atol=0)


def test_float16_parts_compose_to_float32():
    part = labelled_part(2, 3, 4, 0).remainder(1000).half()
    image = compose_image({"eeg_10s": part}, ["eeg_10s"])
    assert image.dtype == torch.float32
    torch.testing.assert_close(image, part.float().reshape(2, 1, 12, 4), rtol=0, atol=0)


def test_frequency_mismatch_names_the_parts():
    parts = {"eeg_10s": torch.zeros(2, 4, 100, 256), "kaggle": torch.zeros(2, 4, 128, 300)}
    with pytest.raises(ValueError, match="eeg_10s.*kaggle"):
        compose_image(parts, ["eeg_10s", "kaggle"])


def test_missing_part_and_wrong_chain_count_raise():
    with pytest.raises(ValueError, match="eeg_30s"):
        compose_image({"eeg_10s": torch.zeros(1, 4, 3, 3)}, ["eeg_10s", "eeg_30s"])
    with pytest.raises(ValueError, match=r"an image part has shape \(B, 4, F, T\), got \(1, 3, 3, 3\)"):
        compose_image({"eeg_10s": torch.zeros(1, 3, 3, 3)}, ["eeg_10s"])  # 3 chains, not 4


def columns(layout) -> list[tuple[str, int, int]]:
    return [(part.array, part.col, part.col + part.width) for part in layout.parts]


def test_layout_gives_each_parts_columns():
    shapes = {"eeg_10s": (4, 100, 256), "eeg_30s": (8, 4, 100, 256), "kaggle": (4, 100, 300)}
    inputs = ["eeg_10s", "eeg_30s", "kaggle"]
    assert columns(side_by_side_layout(shapes, inputs)) == [("eeg_10s", 0, 256), ("eeg_30s", 256, 512),
                                                            ("kaggle", 512, 812)]
    assert columns(side_by_side_layout(shapes, inputs, widths={"kaggle": 256}))[-1] == ("kaggle", 512, 768)
    parts = {name: torch.zeros((2, 4, 100, shape[-1])) for name, shape in shapes.items()}
    assert compose_image(parts, inputs).shape[-1] == columns(side_by_side_layout(shapes, inputs))[-1][2]
