"""tmrjax/train/objective.py and the trainer's registry of objectives (`trainer.OBJECTIVES`).

The steps themselves are checked in test_moco.py and test_cosface.py (8 devices against the
vmap reference); here, without compiling anything: which objective and config sections a
training config carries, and how train() refuses a config that names no objective it knows.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tmrjax import configs
from tmrjax.pipeline import load_config
from tmrjax.train import cosface, moco, trainer
from tmrjax.train.objective import Objective


def training_configs():
    folder = Path(configs.__file__).parent
    names = sorted(p.stem for p in folder.glob("*.py") if p.stem not in ("__init__", "common", "shipped"))
    return [n for n in names if "objective" in load_config(n)]


def test_the_registry_holds_both_objectives():
    assert trainer.OBJECTIVES == {"moco": moco.MOCO, "cosface": cosface.COSFACE}
    assert all(isinstance(o, Objective) for o in trainer.OBJECTIVES.values())
    assert (moco.MOCO.labelled, cosface.COSFACE.labelled) == (False, True)


@pytest.mark.parametrize("name", training_configs())
def test_a_training_config_carries_only_its_objectives_section(name):
    config = load_config(name)
    objective = trainer.objective_of(config)
    others = {o.section for o in trainer.OBJECTIVES.values()} - {objective.section}
    assert objective.section in config
    assert not others & set(config.keys()), f"{name}: sections of other objectives"


def test_the_training_configs_are_found():
    assert {"moco_hu2024", "moco_small_cpu", "cosface_hu2024"} <= set(training_configs())


def test_an_unknown_objective_is_refused_before_the_workdir_is_touched(tmp_path):
    config = load_config("moco_small_cpu")
    config.objective = "simclr"
    with pytest.raises(ValueError, match=r"moco_small_cpu: objective='simclr'; expected one of 'moco', 'cosface'"):
        trainer.train(config, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_a_config_without_its_objectives_section_is_refused(tmp_path):
    config = load_config("cosface_hu2024")
    config.objective = "moco"
    with pytest.raises(ValueError, match=r"cosface_hu2024: objective='moco' reads the config section 'moco', "
                                         r"which the config does not have"):
        trainer.train(config, tmp_path / "run")
    assert not (tmp_path / "run").exists()
