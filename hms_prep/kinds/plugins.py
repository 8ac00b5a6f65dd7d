"""Plug-ins: modules outside hms_prep that register array kinds (`@register_kind`) when imported.

Two ways in, both loaded before any `--array` is parsed:
  - an installed package declares an entry point in the group `hms_cache.plugins`, e.g. in its
    pyproject.toml: [project.entry-points."hms_cache.plugins"] band_power = "my_package.band_power";
  - `hms-prep build --plugin MODULE` imports an importable module by name (on PYTHONPATH or installed).
A kind's module must import wherever the build's tasks run: a Dask worker unpickles the kind by its
module's name, and the build checks every worker imports it before it touches the store.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from importlib.metadata import entry_points

PLUGIN_GROUP = "hms_cache.plugins"


def load_plugins(modules: Sequence[str] = ()) -> None:
    """Import every plug-in: the installed entry points of PLUGIN_GROUP, then each of `modules` (the
    --plugin options). ValueError naming the plug-in and why it did not load (one line)."""
    for entry in entry_points(group=PLUGIN_GROUP):
        try:
            entry.load()
        except Exception as err:
            raise ValueError(f"plug-in {entry.name} = {entry.value} (entry point of {PLUGIN_GROUP}): cannot load it "
                             f"({type(err).__name__}: {err})") from None
    for module in modules:
        try:
            importlib.import_module(module)
        except Exception as err:
            raise ValueError(f"--plugin {module}: cannot import it ({type(err).__name__}: {err}); give the name of "
                             "a module on PYTHONPATH or installed, e.g. --plugin my_package.band_power") from None
