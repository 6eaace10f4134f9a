"""The kinds of gallery index: one table that the index, the configs, the gallery and the CLI read.

Each kind gives its faiss factory string, the faiss class a stored index of it must be, and its
parameters: their faiss names (as meta.json stores them), defaults, and the field of a config's
``index`` section that sets each. The module imports nothing, so configs and the CLI read it
without loading faiss; `tmrjax.index` applies it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

DEFAULT_KIND = "flat"


@dataclass(frozen=True)
class Param:
    """A positive-int parameter of an index kind: its default and the config field that sets it."""

    default: int
    config_field: str


def _fine(params: Mapping[str, int], dim: int) -> str | None:
    return None


def _nothing(index: Any, params: Mapping[str, int]) -> None:
    return None


def _untrained(params: Mapping[str, int]) -> int:
    return 0


@dataclass(frozen=True)
class IndexKind:
    """One kind of index.

    `factory` is formatted with the parameters. `check(params, dim)` says what is wrong with
    parameters that are already positive ints, or None. `configure(index, params)` sets up a new
    faiss index, `set_search(index, params)` sets search-time parameters on every create and open.
    `train_size(params)`: the vectors that training needs, for kinds that start untrained.
    `takes_ids`: faiss keeps our labels as its ids (`add_with_ids`, `remove_ids`); otherwise it
    numbers vectors itself and cannot remove them. `keeps_vectors`: faiss can give the vectors back
    exactly (query expansion and database-side augmentation read them); ivfpq keeps PQ codes.
    """

    factory: str
    faiss_class: str
    params: dict[str, Param] = field(default_factory=dict)
    check: Callable[[Mapping[str, int], int], str | None] = _fine
    configure: Callable[[Any, Mapping[str, int]], None] = _nothing
    set_search: Callable[[Any, Mapping[str, int]], None] = _nothing
    train_size: Callable[[Mapping[str, int]], int] = _untrained
    takes_ids: bool = True
    keeps_vectors: bool = True

    @property
    def defaults(self) -> dict[str, int]:
        """{faiss parameter name: default}."""
        return {name: p.default for name, p in self.params.items()}


def _check_ivfpq(p: Mapping[str, int], dim: int) -> str | None:
    if dim % p["m"]:
        return f"dim {dim} must be divisible by m={p['m']}"
    if p["nbits"] > 16:
        return f"nbits must be in 1..16, got {p['nbits']}"
    if p["nprobe"] > p["nlist"]:
        return f"nprobe={p['nprobe']} exceeds nlist={p['nlist']}"
    return None


def _configure_ivfpq(index: Any, p: Mapping[str, int]) -> None:
    index.do_polysemous_training = False  # only for Hamming-filtered search, which we do not use; slow


def _search_ivfpq(index: Any, p: Mapping[str, int]) -> None:
    index.nprobe = p["nprobe"]


def _train_size_ivfpq(p: Mapping[str, int]) -> int:
    return max(p["nlist"], 2 ** p["nbits"])


def _check_hnsw(p: Mapping[str, int], dim: int) -> str | None:
    return f"M must be at least 2, got {p['M']}" if p["M"] < 2 else None


def _configure_hnsw(index: Any, p: Mapping[str, int]) -> None:
    index.hnsw.efConstruction = p["efConstruction"]


def _search_hnsw(index: Any, p: Mapping[str, int]) -> None:
    index.hnsw.efSearch = p["efSearch"]


INDEX_KINDS: dict[str, IndexKind] = {
    "flat": IndexKind(factory="IDMap,Flat", faiss_class="IndexIDMap"),
    "ivfpq": IndexKind(
        factory="IVF{nlist},PQ{m}x{nbits}",
        faiss_class="IndexIVFPQ",
        params={"nlist": Param(1024, "nlist"), "m": Param(32, "m"), "nbits": Param(8, "nbits"),
                "nprobe": Param(16, "nprobe")},
        check=_check_ivfpq,
        configure=_configure_ivfpq,
        set_search=_search_ivfpq,
        train_size=_train_size_ivfpq,
        keeps_vectors=False,
    ),
    "hnsw": IndexKind(
        factory="HNSW{M},Flat",
        faiss_class="IndexHNSWFlat",
        params={"M": Param(32, "hnsw_m"), "efConstruction": Param(200, "ef_construction"),
                "efSearch": Param(128, "ef_search")},
        check=_check_hnsw,
        configure=_configure_hnsw,
        set_search=_search_hnsw,
        takes_ids=False,
    ),
}


def config_defaults() -> dict[str, Any]:
    """A config's ``index`` section: the default kind, and every kind's parameters under their config fields."""
    fields = {p.config_field: p.default for kind in INDEX_KINDS.values() for p in kind.params.values()}
    return {"kind": DEFAULT_KIND, **fields}

