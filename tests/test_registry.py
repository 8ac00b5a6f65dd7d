"""The one registry (hms_prep/registry.py) every open axis uses: a clash refused in one line, entry points
of its own group registered on first look, the listing with each entry's settings, and a builder's
signature as its settings (the model table's check)."""

import dataclasses
from typing import Annotated, Literal

import pytest

from hms_prep.registry import REQUIRED, Registry, RegistryError, settings_from_signature


def test_a_name_registered_twice_is_refused_in_one_line():
    registry = Registry("widget", "test_widgets")
    registry.register("a", len)
    with pytest.raises(RegistryError) as caught:
        registry.register("a", sum)
    assert str(caught.value) == ("widget 'a' is registered twice (by builtins and builtins); give one of them "
                                 "another name")
    with pytest.raises(RegistryError, match=r"^unknown widget 'b'; registered: \['a'\]$"):
        registry.entry("b")
    assert registry["a"] is len and list(registry) == ["a"] and "b" not in registry


def test_entry_points_of_its_group_are_registered_on_first_look(tmp_path, monkeypatch):
    """An installed distribution (a dist-info folder on sys.path) declares `hms_cache.test_tables`
    entries: one object registered as it is, one module whose import registers it by itself."""
    (tmp_path / "my_tables.py").write_text(
        "def halves(labels):\n    return labels\n")
    info = tmp_path / "my_tables-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: my-tables\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[hms_cache.test_tables]\nhalves = my_tables:halves\n"
                                           "broken = no_such_module:thing\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    registry = Registry("row table", "test_tables", settings=False)
    with pytest.raises(RegistryError, match=r"^row table broken = no_such_module:thing \(entry point of "
                                            r"hms_cache.test_tables\): cannot load it \(ModuleNotFoundError"):
        list(registry)
    assert registry["halves"].__module__ == "my_tables"


@dataclasses.dataclass(frozen=True)
class Knobs:
    size: int
    p: float = 0.5


def test_the_listing_shows_each_entry_with_its_settings():
    registry = Registry("knob", "test_knobs")
    registry.register("big", object, Knobs, order=3)
    assert registry.describe() == ["  big                    order=3  size=<required>, p=0.5"]
    assert registry.entry("big").defaults() == {"size": REQUIRED, "p": 0.5}


def test_a_builders_signature_is_its_settings():
    def build(image_size, channels: int = 8, pool: Literal["avg", "max"] = "avg",
              rate: Annotated[float, "probability"] = 0.1, extra=None):
        return None

    settings = settings_from_signature(build, leave_out=("image_size",))
    fields = {f.name: (f.type, f.default, dict(f.metadata)) for f in dataclasses.fields(settings)}
    assert list(fields) == ["channels", "pool", "rate", "extra"]
    assert fields["channels"][:2] == (int, 8) and fields["pool"][0] == Literal["avg", "max"]
    assert fields["rate"] == (float, 0.1, {"probability": True})


def test_both_clis_list_what_is_registered_with_its_settings():
    """`hms-train list --plugin extra_model` (a process of its own: the plug-in stays out of this one)
    and `hms-prep list`."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from typer.testing import CliRunner

    from conftest import ROOT
    from hms_prep.cli import app

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent / "plugins"), str(ROOT)])}
    listed = subprocess.run([sys.executable, "-m", "hms_train.cli", "list", "--plugin", "extra_model"], cwd=ROOT,
                            env=env, capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert "  tiny_conv              inputs=('image',)  channels=8, drop_rate=0.0" in lines
    assert any(line.startswith("  2d ") and "backbone='efficientnet_b0'" in line for line in lines)
    assert any(line.startswith("  negate ") and "order=45" in line for line in lines)
    assert any(line.split() == ["richard", "chooses_among_used=True"] for line in lines)
    prep = CliRunner().invoke(app, ["list"])
    assert prep.exit_code == 0
    assert "  kaggle                 source='spectrogram'  storage='row'  role='image'  window_s=600" in prep.output.splitlines()
    assert "  zstd                   family='zstd'" in prep.output.splitlines()
