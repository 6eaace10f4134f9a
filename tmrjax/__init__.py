"""tmrjax: large-scale trademark (logo) image retrieval in JAX/Flax."""

from ._version import __version__
from .pipeline import Pipeline, PipelineError
from .runner import embed, embed_stream
from .weights import WeightsError, load_backbone

__all__ = ["Pipeline", "PipelineError", "WeightsError", "__version__", "embed", "embed_stream", "load_backbone"]
