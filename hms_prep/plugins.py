"""Plug-ins: modules outside the packages that register array kinds (`@register_kind`), model kinds
(`@register_model`) or augmentations (`@register_augmentation`) when imported. Both commands load them
the same way, before they check anything that may name what a plug-in registers:
  - an installed package declares an entry point in the group `hms_cache.plugins`, e.g. in its
    pyproject.toml: [project.entry-points."hms_cache.plugins"] band_power = "my_package.band_power";
  - a module named by the user: `hms-prep build --plugin MODULE`, a recipe's `plugins = ["MODULE"]`.
A kind's module must import wherever the build's tasks run: a Dask worker unpickles the kind by its
module's name, and the build checks every worker imports it before it touches the store.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from importlib.metadata import entry_points

PLUGIN_GROUP = "hms_cache.plugins"
_entry_points_loaded = False


def load_plugins(modules: Sequence[str] = (), option: str = "--plugin") -> None:
    """Import every plug-in: the installed entry points of PLUGIN_GROUP, then each of `modules` (named by
    `option`: the --plugin options, a recipe's plugins). ValueError naming the plug-in and why it did not
    load (one line)."""
    global _entry_points_loaded
    for entry in () if _entry_points_loaded else entry_points(group=PLUGIN_GROUP):
        try:
            entry.load()
        except Exception as err:
            raise ValueError(f"plug-in {entry.name} = {entry.value} (entry point of {PLUGIN_GROUP}): cannot load it "
                             f"({type(err).__name__}: {err})") from None
    _entry_points_loaded = True  # once per process: a config is read many times (every fold predict loads)
    for module in modules:
        try:
            importlib.import_module(module)
        except Exception as err:
            raise ValueError(f"{option} {module}: cannot import it ({type(err).__name__}: {err}); give the name of "
                             "a module on PYTHONPATH or installed, e.g. my_package.band_power") from None
