"""tmrjax: large-scale trademark (logo) image retrieval in JAX/Flax.

The names below load on first use (PEP 562), so `import tmrjax` and `tmrjax --help` do not
import jax.
"""

from __future__ import annotations

import importlib
from typing import Any

from ._version import __version__

_LAZY = {
    "Pipeline": "pipeline",
    "PipelineError": "method_configs",
    "WeightsError": "weights",
    "embed": "runner",
    "embed_stream": "runner",
    "load_backbone": "weights",
}

__all__ = ["Pipeline", "PipelineError", "WeightsError", "__version__", "embed", "embed_stream", "load_backbone"]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'tmrjax' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
