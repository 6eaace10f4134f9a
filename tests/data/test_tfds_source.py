"""tmrjax/data/tfds_source.py: reading prepared tfds splits, and clear errors otherwise."""

import pytest

from tmrjax.data.tfds_source import open_split, parse_spec


def test_parse_spec_splits_name_and_split():
    assert parse_spec("logo_groups/small:queries+gallery") == ("logo_groups/small", "queries+gallery")
    with pytest.raises(ValueError, match="NAME"):
        parse_spec("logo_groups/small")


def test_an_unprepared_dataset_is_an_error_with_the_build_command_not_a_silent_build(tmp_path):
    with pytest.raises(FileNotFoundError, match="build_logo_groups\\('small'") as info:
        open_split("logo_groups/small:queries", tmp_path)
    assert str(tmp_path) in str(info.value)
    assert not any(tmp_path.rglob("*.array_record*"))  # nothing was built
