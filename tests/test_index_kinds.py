"""tmrjax/index_kinds.py: the one table of index kinds, read by the index, the configs, the gallery and the CLI."""

import faiss
import pytest
from tmrjax.configs.common import retrieval_config

from tmrjax.cli import build_parser
from tmrjax.gallery import index_params
from tmrjax.index import GalleryIndex, validate_index_params
from tmrjax.index_kinds import DEFAULT_KIND, INDEX_KINDS, config_defaults
from tmrjax.pipeline import PipelineError

PIPELINE = {"name": "kinds-test", "vectors_hash": "c0ffee"}


def test_config_fields_are_unique_and_the_config_has_them_all():
    fields = [p.config_field for kind in INDEX_KINDS.values() for p in kind.params.values()]
    assert len(fields) == len(set(fields))
    config = retrieval_config()
    assert config.index.to_dict() == config_defaults()
    assert config.index.kind == DEFAULT_KIND
    assert config_defaults() == {"kind": "flat", "nlist": 1024, "m": 32, "nbits": 8, "nprobe": 16,
                                 "hnsw_m": 32, "ef_construction": 200, "ef_search": 128}


@pytest.mark.parametrize("kind", list(INDEX_KINDS))
def test_config_defaults_give_the_kinds_defaults(kind):
    config = retrieval_config()
    params = index_params(config, kind)
    assert params == {"kind": kind, **INDEX_KINDS[kind].defaults}
    assert validate_index_params(params, 256) == params


def test_index_params_renames_config_fields_to_the_stored_names():
    config = retrieval_config()
    config.index.kind, config.index.hnsw_m, config.index.ef_search = "hnsw", 8, 40
    assert index_params(config) == {"kind": "hnsw", "M": 8, "efConstruction": 200, "efSearch": 40}
    assert index_params(config, "flat") == {"kind": "flat"}
    with pytest.raises(PipelineError, match="unknown index kind 'lsh'; expected one of flat, ivfpq, hnsw"):
        index_params(config, "lsh")


@pytest.mark.parametrize("kind", list(INDEX_KINDS))
def test_each_kind_builds_and_reopens_as_its_faiss_class(tmp_path, kind):
    params = {"kind": kind, "nlist": 4, "nprobe": 2} if kind == "ivfpq" else {"kind": kind}
    gallery = GalleryIndex.create(str(tmp_path / "idx"), 64, params, PIPELINE)
    assert type(gallery._index).__name__ == INDEX_KINDS[kind].faiss_class
    assert type(GalleryIndex.open(str(tmp_path / "idx"))._index).__name__ == INDEX_KINDS[kind].faiss_class
    assert isinstance(gallery._index, faiss.Index)


def test_cli_kind_choices_are_the_table():
    args = build_parser().parse_args(["index", "imgs", "--pipeline", "p", "--out", "o", "--kind", "hnsw"])
    assert args.kind == "hnsw"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["index", "imgs", "--pipeline", "p", "--out", "o", "--kind", "lsh"])
