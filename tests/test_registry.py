import pytest

from coprs.registry import ALL_REGISTRIES, COMPONENT_REGISTRIES, DECODERS, MODELS, PRIORS
from coprs.utils import register_all_modules


def test_component_registries_are_roots_in_scope_coprs():
    for reg in COMPONENT_REGISTRIES.values():
        assert reg.scope == "coprs"
        assert reg.parent is None


def test_runner_registries_are_children_of_mmengine():
    from mmengine.registry import MODELS as MM_MODELS

    assert MODELS.parent is MM_MODELS
    assert MM_MODELS.children["coprs"] is MODELS
    for name, reg in ALL_REGISTRIES.items():
        if name not in COMPONENT_REGISTRIES:
            assert reg.parent is not None and reg.scope == "coprs", name


def test_builtins_are_registered():
    assert "HeatmapPrior" in PRIORS.registered_names()
    assert "PriorDecoder" in DECODERS.registered_names()
    assert "ReasoningSegmentor" in MODELS.registered_names()


def test_unknown_type_names_registry_and_lists_names():
    with pytest.raises(KeyError) as err:
        PRIORS.build(dict(type="HeatmapPriorr", query_dim=8, key_in_dim=8))
    msg = str(err.value)
    assert "HeatmapPriorr" in msg and "coprs::prior" in msg and "HeatmapPrior," not in msg[:20]
    assert "HeatmapPrior" in msg.split("Registered names:")[1]


def test_mmengine_root_builds_through_default_scope():
    from mmengine.registry import MODELS as MM_MODELS
    from mmengine.registry import DefaultScope

    register_all_modules()
    assert DefaultScope.get_current_instance().scope_name == "coprs"
    with MM_MODELS.switch_scope_and_registry(None) as registry:
        assert registry is MODELS
        assert registry.get("ReasoningSegmentor") is MODELS.get("ReasoningSegmentor")
