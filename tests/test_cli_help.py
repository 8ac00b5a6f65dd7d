"""`-h` is `--help` on both CLIs and every command of each (hms-train's default `train` included)."""

import pytest
from typer.main import get_command
from typer.testing import CliRunner

from hms_prep.cli import app as prep_app
from hms_train.cli import app as train_app


def command_lines():
    for name, app in (("hms-prep", prep_app), ("hms-train", train_app)):
        yield name, []
        for command in get_command(app).commands:
            yield name, [command]


@pytest.mark.parametrize("cli, command", list(command_lines()), ids=lambda v: v if isinstance(v, str) else " ".join(v))
def test_dash_h_is_help_everywhere(cli, command):
    app = prep_app if cli == "hms-prep" else train_app
    runner = CliRunner()
    short, long = (runner.invoke(app, [*command, flag], prog_name=cli) for flag in ("-h", "--help"))
    assert short.exit_code == 0 and long.exit_code == 0, short.output
    assert short.output == long.output and "Usage:" in short.output


def test_the_resume_help_says_it_resumes_mid_epoch():
    text = CliRunner().invoke(train_app, ["train", "-h"], terminal_width=400).output
    assert "mid-epoch" in text and "last complete epoch" not in text
