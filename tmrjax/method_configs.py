"""Finding and loading method configs (tmrjax/configs); imports neither jax nor the models, so
the command line lists the configs without loading them."""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path

from ml_collections import ConfigDict

# helpers of the configs in tmrjax/configs, not configs
CONFIG_HELPERS = ("__init__", "common", "shipped")


class PipelineError(ValueError):
    """A pipeline that cannot be built or does not match its artefacts."""


class MissingFieldError(PipelineError):
    """A config without a field every config has: written by hand, or stored by an earlier tmrjax."""


def load_config(name_or_path: str) -> ConfigDict:
    """A method config by name (``mr_rsmac_ura``) or by path to a ``get_config()`` file."""
    path = Path(name_or_path)
    if path.suffix == ".py" and path.is_file():
        spec = importlib.util.spec_from_file_location(f"tmrjax_user_config_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)  # type: ignore[union-attr]
    else:
        try:
            module = importlib.import_module(f"tmrjax.configs.{name_or_path}")
        except ModuleNotFoundError:
            raise PipelineError(
                f"unknown pipeline {name_or_path!r}: not a config in tmrjax/configs "
                f"({', '.join(available_configs())}), a .py config file, or a fitted pipeline directory"
            ) from None
    if not hasattr(module, "get_config"):
        raise PipelineError(f"{name_or_path}: config module has no get_config()")
    return module.get_config()


def available_configs() -> list[str]:
    """Names of the retrieval (embedding) configs in tmrjax/configs; training recipes excluded."""
    from . import configs

    folder = Path(configs.__file__).parent
    names = sorted(p.stem for p in folder.glob("*.py") if p.stem not in CONFIG_HELPERS)
    return [n for n in names if "embed" in (config := load_config(n)) or "parts" in config]
