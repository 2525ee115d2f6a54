"""Layer nodes of model configs: flat ones are built directly, the rest by Hydra, with the same results."""
from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from orchestrator.training.models import _instantiate, _locate
from orchestrator.runtime.tf_env import import_keras


def test_flat_node_is_built_like_hydra_builds_it():
    from hydra.utils import instantiate

    keras = import_keras()
    node = OmegaConf.create({"_target_": "tf_keras.layers.Conv2D", "filters": 4, "kernel_size": [3, 3],
                             "activation": "relu", "padding": "same", "name": "c1"})
    ours, hydras = _instantiate(node), instantiate(node)
    assert type(ours) is keras.layers.Conv2D
    assert ours.get_config() == hydras.get_config()
    assert isinstance(ours.get_config()["kernel_size"], tuple)


def test_nested_and_partial_nodes_go_through_hydra():
    keras = import_keras()
    nested = OmegaConf.create({"_target_": "tf_keras.layers.Dense", "units": 3,
                               "kernel_regularizer": {"_target_": "tf_keras.regularizers.L2", "l2": 0.5}})
    layer = _instantiate(nested)
    assert isinstance(layer.kernel_regularizer, keras.regularizers.L2)
    assert layer.kernel_regularizer.get_config()["l2"] == pytest.approx(0.5)
    partial = _instantiate(OmegaConf.create({"_target_": "tf_keras.layers.Dense", "_partial_": True}))
    assert isinstance(partial(units=2), keras.layers.Dense)


def test_locate_reports_what_is_missing():
    with pytest.raises(ImportError):
        _locate("no_such_package_xyz.Layer")
    with pytest.raises(AttributeError):
        _locate("tf_keras.layers.NoSuchLayer")
