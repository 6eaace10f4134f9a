"""kernels/__init__.py: its re-exports leave every submodule reachable by its own name."""

import inspect
import pkgutil

import tmrjax.kernels as kernels


def test_no_export_shadows_a_submodule():
    submodules = {m.name for m in pkgutil.iter_modules(kernels.__path__)}
    assert {"crow", "idf", "pooling", "regions", "whitening"} <= submodules
    assert not submodules & set(kernels.__all__)
    for name in submodules:
        assert inspect.ismodule(getattr(kernels, name)), name
    for name in kernels.__all__:
        assert not inspect.ismodule(getattr(kernels, name)), name
