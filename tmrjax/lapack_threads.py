"""The threads of the OpenBLAS that scipy bundles, the LAPACK behind jaxlib's CPU `eigh`.

Embedding wants it on one thread: the matrix logarithm of second-order pooling (jeong2017 Eq. 5)
solves small eigenproblems, and the library's idle threads compete with XLA's (jeong2017_lite0's
whole embedding was 1.2-2x slower, benchmarks/RESULTS.md section 12). Fitting wants every core for
its one large eigendecomposition (PCA-whitening of 8,256-d second-order descriptors: 46 s on one
thread, 25 s on two). numpy's and faiss's BLAS are other libraries and keep their threads either way.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def scipy_openblas_limit(threads: int):
    """Run scipy's bundled OpenBLAS on `threads` threads until the returned threadpoolctl limiter's
    `restore_original_limits()` (or the end of a `with` block on it); None, changing nothing, where
    this scipy has no OpenBLAS of its own."""
    import scipy.linalg.cython_lapack  # noqa: F401  (loads scipy's BLAS, so the controller sees it)
    from threadpoolctl import ThreadpoolController

    controller = ThreadpoolController()
    ours = [lib.filepath for lib in controller.lib_controllers
            if lib.internal_api == "openblas" and inside_scipy(lib.filepath)]
    return controller.select(filepath=ours).limit(limits=threads) if ours else None


def every_core_for_lapack() -> contextlib.AbstractContextManager:
    """A `with` block in which scipy's OpenBLAS has one thread per core, as it had before any limit."""
    limiter = scipy_openblas_limit(os.cpu_count() or 1)
    return limiter if limiter is not None else contextlib.nullcontext()


def inside_scipy(path: str) -> bool:
    """Whether a shared library lies in scipy's wheel: site-packages/scipy.libs/ (Linux) or scipy/.dylibs/."""
    parent = Path(path).parent
    return parent.name.startswith("scipy") or parent.parent.name == "scipy"
