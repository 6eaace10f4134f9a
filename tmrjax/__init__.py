"""tmrjax: large-scale trademark (logo) image retrieval in JAX/Flax."""

__version__ = "0.1.0"

from .weights import WeightsError, load_backbone  # noqa: E402

__all__ = ["WeightsError", "__version__", "load_backbone"]
