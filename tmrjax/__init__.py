"""tmrjax: large-scale trademark (logo) image retrieval in JAX/Flax."""

__version__ = "0.1.0"

from .pipeline import Pipeline, PipelineError, embed, embed_stream
from .weights import WeightsError, load_backbone

__all__ = ["Pipeline", "PipelineError", "WeightsError", "__version__", "embed", "embed_stream", "load_backbone"]
