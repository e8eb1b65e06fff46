"""Plugins: modules or ``.py`` files, outside elbox, that register model types or objectives of
their own. A run records the ones it was fitted with (``[plugins] imports`` in its config), so
that ``elbox evaluate``, ``elbox report`` and :func:`elbox.load_run` import them again."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

from elbox.runs._schema import ConfigError

__all__ = ["import_plugins", "resolved"]


def resolved(names: list[str] | tuple[str, ...]) -> list[str]:
    """The plugins as a run records them: ``.py`` files as absolute paths (so that a run is
    evaluated from any directory), module names as given."""
    return [str(Path(n).expanduser().resolve()) if n.endswith(".py") else n for n in names]


def import_plugins(names: list[str] | tuple[str, ...], where: str = "--import") -> None:
    """Imports each module (by name) or ``.py`` file (by path), once per process.

    Raises:
        ConfigError: If a file does not exist or a module cannot be imported; ``where`` names the
            option or config key that gave it.
    """
    for name in names:
        path = Path(name).expanduser()
        try:
            if name.endswith(".py"):
                if not path.is_file():
                    raise FileNotFoundError(f"{path} does not exist (a plugin's file, to import)")
                module_name = f"elbox_plugin_{path.stem}"
                loaded = sys.modules.get(module_name)
                if loaded is not None and Path(loaded.__file__).resolve() == path.resolve():
                    continue
                spec = importlib.util.spec_from_file_location(module_name, path)
                module = importlib.util.module_from_spec(spec)
                sys.modules[module_name] = module
                try:
                    spec.loader.exec_module(module)
                except BaseException:
                    del sys.modules[module_name]
                    raise
            else:
                importlib.import_module(name)
        except (ImportError, FileNotFoundError, SyntaxError) as error:
            raise ConfigError(f"{where} {name}: {type(error).__name__}: {error}") from None
