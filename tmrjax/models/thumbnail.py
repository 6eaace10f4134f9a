"""The trivial baseline "backbone": a mark's ink as a small grey thumbnail, no network.

The data layer pads every mark to a white square and resizes it to the pipeline's resolution
(32 for the ``thumbnail`` config); this module turns that RGB image into ink, 1 - grey / 255
(0 on the white paper, 1 on black ink), one channel. Pooled by ``flatten`` and l2-normalised it
is the nearest-neighbour-on-pixels baseline that every learned descriptor must beat.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

LAYOUT = "none"
TAPS = ("ink",)
# ITU-R BT.601 luma weights, as PIL's convert("L") uses.
LUMA = (0.299, 0.587, 0.114)


class InkThumbnail(nn.Module):
    """(B, S, S, 3) RGB in [0, 255] -> {"ink": (B, S, S, 1)} in [0, 1]; no variables."""

    layout: str = LAYOUT
    taps: Sequence[str] = TAPS
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, images: jnp.ndarray, train: bool = False) -> dict[str, jnp.ndarray]:
        if list(self.taps) != list(TAPS):
            raise ValueError(f"the ink thumbnail has one tap, {TAPS}; got {list(self.taps)}")
        grey = jnp.tensordot(images.astype(jnp.float32), jnp.asarray(LUMA), axes=([-1], [0]))
        return {"ink": (1.0 - grey / 255.0)[..., None].astype(self.dtype)}
