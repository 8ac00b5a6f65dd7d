"""What `hms-prep build` shows on a terminal: a first line before the slow steps, and a bar whose rows/s is
the summary's (both over the seconds since the build started: docs/cli.md)."""

import io
import re

from rich.console import Console
from typer.testing import CliRunner

import hms_prep.cli


def test_build_says_what_it_plans_first_and_the_bar_agrees_with_the_summary(tiny_data, tmp_path, monkeypatch):
    screen = io.StringIO()  # a terminal: the rich bar, not the plain log lines
    monkeypatch.setattr(hms_prep.cli, "console", Console(file=screen, force_terminal=True, width=200))
    store = tmp_path / "s.zarr"
    # two chunks (16 + 5 rows) in this process: a bar timed from its first update would see only the second
    result = CliRunner().invoke(hms_prep.cli.app, ["build", "--data", str(tiny_data), "--store", str(store),
                                                   "--windows", "10", "--chunk-rows", "16"])
    assert result.exit_code == 0, result.output
    shown = screen.getvalue()
    assert shown.startswith(f"planning 21 rows of train.csv into {store}: eeg_10s, "), shown
    bar_rate = float(re.findall(r"([\d.]+) rows/s", shown)[-1])
    summary_rate = float(re.search(r"\(([\d.]+) rows/s\)", result.stdout).group(1))
    # the summary's seconds add only the record at the end (labels.parquet) to the bar's last update
    assert 0.75 * bar_rate <= summary_rate <= bar_rate + 0.1, (shown, result.stdout)
