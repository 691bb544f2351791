"""Plugins: entry-point loading, failure isolation, conflicts, switches, config dirs, `coprs list`.

Every test sees only the fake plugins it names (``isolated_plugins``), never the installed ones.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
from pathlib import Path

import pytest
import torch

from coprs import __version__, plugins
from coprs.cli import main
from coprs.plugins import (
    LocalPlugin,
    PluginConflictError,
    PluginWarning,
    hookimpl,
    isolated_plugins,
    load_plugins,
)
from coprs.registry import COMPONENT_REGISTRIES, DATASETS, REWARDS
from coprs.rewards import BaseReward

ROOT = Path(__file__).resolve().parents[1]


class FakeReward(BaseReward):
    name = "fake"

    def __call__(self, responses, pred_probs=None, gt=None, valid=None):
        import torch

        return torch.ones(len(responses))


class RewardPlugin:
    """A plugin object: one hook, one reward."""

    @hookimpl
    def register_rewards(self, register):
        register(FakeReward)


def _reward_plugin(name="fake-plugin", version="1.2"):
    return LocalPlugin(name, RewardPlugin(), version=version)


def test_fake_plugin_registers_on_first_lookup_once():
    loads = []

    def loader():
        loads.append(1)
        return RewardPlugin()

    with isolated_plugins([LocalPlugin("fake-plugin", loader=loader, version="1.2")]):
        assert not loads  # nothing happens before a lookup
        assert REWARDS.get("FakeReward") is FakeReward
        assert REWARDS.get("MaskReward") is not None  # built-ins are all still there
        load_plugins()
        assert loads == [1]
        assert plugins.origin_of("rewards", "FakeReward") == "fake-plugin 1.2"
        assert plugins.origin_of("rewards", "MaskReward") == f"coprs {__version__}"
        (info,) = plugins.plugins()
        assert info.status == "loaded" and info.components == [("rewards", "FakeReward")]
        built = REWARDS.build(dict(type="WeightedSumReward", rewards=[
            dict(reward=dict(type="FakeReward"), weight=1.0)]))
        assert built(["a", "b"]).tolist() == [1.0, 1.0]
    assert REWARDS.get("FakeReward") is None  # removed with the plugin


@pytest.mark.parametrize("hook, kind", sorted(plugins.REGISTER_HOOKS.items()))
def test_every_register_hook_registers_into_its_registry(hook, kind):
    class Thing:
        pass

    def impl(register):
        register(Thing, name=f"PluginThing_{kind}")

    plugin = type("P", (), {hook: staticmethod(hookimpl(impl))})()
    with isolated_plugins([LocalPlugin("p", plugin)]):
        assert COMPONENT_REGISTRIES[kind].get(f"PluginThing_{kind}") is Thing
        assert plugins.origin_of(kind, f"PluginThing_{kind}") == "p 0.0"


def test_register_modules_reaches_runner_registries_and_names_bad_kinds():
    class MyDataset:
        pass

    class Plugin:
        @hookimpl
        def register_modules(self, register):
            register("datasets", MyDataset)

    class BadKind:
        @hookimpl
        def register_modules(self, register):
            register("dataset", MyDataset)  # singular: not a kind

    with isolated_plugins([LocalPlugin("good", Plugin())]):
        assert DATASETS.get("MyDataset") is MyDataset
    with isolated_plugins([LocalPlugin("bad", BadKind())]):
        with pytest.warns(PluginWarning, match=r"bad 0\.0.*unknown registry kind 'dataset'.*"
                                               r"datasets"):
            load_plugins()


def test_failing_plugins_warn_with_name_and_error_and_the_rest_works():
    def broken_import():
        raise ModuleNotFoundError("No module named 'missing_dep'")

    class RaisesInHook:
        @hookimpl
        def register_rewards(self, register):
            register(FakeReward, name="PartialReward")  # rolled back with the plugin
            raise RuntimeError("boom")

    class Misspelled:
        @hookimpl
        def register_reward(self, register):  # no such hook
            pass

    eps = [LocalPlugin("broken", loader=broken_import, version="0.3"),
           LocalPlugin("raiser", RaisesInHook()), LocalPlugin("typo", Misspelled()),
           _reward_plugin()]
    with isolated_plugins(eps):
        with pytest.warns(PluginWarning) as record:
            infos = load_plugins()
        messages = [str(w.message) for w in record]
        assert any("broken 0.3 failed to import" in m and "missing_dep" in m for m in messages)
        assert any("raiser 0.0" in m and "RuntimeError: boom" in m for m in messages)
        assert any("typo 0.0" in m and "register_reward" in m for m in messages)
        assert [i.status for i in infos] == ["failed", "failed", "failed", "loaded"]
        assert REWARDS.get("PartialReward") is None
        assert REWARDS.get("FakeReward") is FakeReward  # the healthy plugin
        assert REWARDS.get("MaskReward") is not None  # and the core


def test_duplicate_name_fails_loudly_naming_both_origins():
    class Clash:
        @hookimpl
        def register_rewards(self, register):
            register(FakeReward, name="MaskReward")

    with isolated_plugins([LocalPlugin("clash", Clash(), version="2.0")]):
        with pytest.raises(PluginConflictError) as err:
            REWARDS.get("MaskReward")
        msg = str(err.value)
        assert "plugin clash 2.0 registers 'MaskReward'" in msg and "FakeReward" in msg
        assert f"coprs {__version__} (coprs.rewards.mask.MaskReward)" in msg
        assert "'MaskReward'" in msg and "coprs::reward" in msg
        with pytest.raises(PluginConflictError):  # not silently forgotten
            REWARDS.get("MaskReward")
    from coprs.rewards import MaskReward

    assert REWARDS.get("MaskReward") is MaskReward  # never overridden


def test_a_plugin_cannot_hide_what_coprs_gets_from_mmengines_registries():
    """mmengine's registries are the parents of coprs's: a plugin registering ``AdamW`` or
    ``IterTimerHook`` in coprs's registry would hide torch's and mmengine's (builds search the
    child first)."""
    from mmengine.hooks import IterTimerHook

    from coprs.registry import HOOKS, OPTIMIZERS

    class Shadow:
        @hookimpl
        def register_modules(self, register):
            register("optimizers", FakeReward, name="AdamW")

    class ShadowHook:
        @hookimpl
        def register_modules(self, register):
            register("hooks", FakeReward, name="IterTimerHook")

    with isolated_plugins([LocalPlugin("shadow", Shadow())]):
        with pytest.raises(PluginConflictError, match=r"plugin shadow 0\.0 registers 'AdamW'.*"
                                                      r"would hide torch\.optim.*AdamW"):
            load_plugins()
    with isolated_plugins([LocalPlugin("shadow-hook", ShadowHook())]):
        with pytest.raises(PluginConflictError, match="would hide mmengine"):
            load_plugins()
    assert OPTIMIZERS.get("AdamW") is torch.optim.AdamW
    assert HOOKS.get("IterTimerHook") is IterTimerHook


def test_warnings_as_errors_do_not_stop_the_plugins_after_a_broken_one():
    import warnings

    eps = [LocalPlugin("broken", loader=lambda: 1 / 0), _reward_plugin()]
    with isolated_plugins(eps):
        with warnings.catch_warnings():
            warnings.simplefilter("error", PluginWarning)  # python -W error, pytest's setting
            with pytest.raises(PluginWarning, match="broken 0.0 failed to import"):
                load_plugins()
        assert [i.status for i in load_plugins()] == ["failed", "loaded"]
        assert REWARDS.get("FakeReward") is FakeReward


def test_collect_env_reports_a_conflict_instead_of_failing(capsys):
    with isolated_plugins([_reward_plugin("first", "1.0"), _reward_plugin("second", "2.0")]):
        assert main(["collect-env"]) == 0
        out = capsys.readouterr().out
        assert "coprs plugin conflict: plugin second 2.0 registers 'FakeReward'" in out
        assert "coprs plugins: first 1.0 (loaded), second 2.0 (failed)" in out
        assert "PyTorch: " in out  # the rest of the report is there


def test_duplicate_between_two_plugins_names_both():
    with isolated_plugins([_reward_plugin("first", "1.0"), _reward_plugin("second", "2.0")]):
        with pytest.raises(PluginConflictError, match=r"second 2\.0.*first 1\.0"):
            load_plugins()


def test_disable_and_allow_list_switches(monkeypatch, capsys):
    with isolated_plugins([_reward_plugin(), _reward_plugin("other", "0.1")]):
        monkeypatch.setenv("COPRS_DISABLE_PLUGINS", "1")
        assert load_plugins() == []
        assert REWARDS.get("FakeReward") is None
        assert main(["list", "plugins"]) == 0
        assert "disabled" in capsys.readouterr().out
    with isolated_plugins([_reward_plugin(), LocalPlugin("other", loader=lambda: 1 / 0)]):
        monkeypatch.delenv("COPRS_DISABLE_PLUGINS")
        monkeypatch.setenv("COPRS_PLUGINS", "fake-plugin")
        infos = load_plugins()  # "other" is never imported: no warning
        assert [(i.name, i.status) for i in infos] == [("fake-plugin", "loaded"),
                                                      ("other", "skipped")]
    with isolated_plugins([_reward_plugin()]):
        monkeypatch.setenv("COPRS_PLUGINS", "fake-plugn")  # a typo: said, not silently none
        with pytest.warns(PluginWarning, match="COPRS_PLUGINS names fake-plugn, which no "
                                               "installed plugin is; installed: fake-plugin"):
            load_plugins()


def test_real_entry_point_objects_through_monkeypatched_discovery(tmp_path, monkeypatch):
    (tmp_path / "coprs_fake_ep_plugin.py").write_text(
        "from coprs.plugins import hookimpl\n"
        "class ModuleReward:\n    pass\n"
        "@hookimpl\n"
        "def register_rewards(register):\n    register(ModuleReward)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    ep = importlib.metadata.EntryPoint(name="fake-ep", value="coprs_fake_ep_plugin",
                                       group="coprs")
    plugins.unload_plugins()
    monkeypatch.setattr(plugins, "_entry_points", lambda: [ep])
    try:
        assert REWARDS.get("ModuleReward").__module__ == "coprs_fake_ep_plugin"
        assert plugins.origin_of("rewards", "ModuleReward").startswith("fake-ep ")
    finally:
        plugins.unload_plugins()


def test_config_dirs_resolve_plugin_configs(tmp_path, capsys):
    from coprs.commands.common import UsageError, load_config

    (tmp_path / "sub").mkdir()
    base = ROOT / "configs" / "coprs" / "coprs_tiny_shapes_cpu.py"
    (tmp_path / "sub" / "tiny.py").write_text(f"_base_ = [{str(base)!r}]\nwork_dir = 'w'\n")

    class Configs:
        @hookimpl
        def config_dirs(self):
            return tmp_path

    with isolated_plugins([LocalPlugin("cfg-plugin", Configs())]):
        assert plugins.config_dirs() == {"cfg-plugin": [tmp_path.resolve()]}
        assert plugins.resolve_config("cfg-plugin::sub/tiny.py") == tmp_path.resolve() / "sub/tiny.py"
        cfg = load_config("cfg-plugin::sub/tiny.py")
        assert cfg.work_dir == "w" and cfg.model.type == "ReasoningSegmentor"
        with pytest.raises(UsageError, match="has no 'nope.py'.*sub/tiny.py"):
            load_config("cfg-plugin::nope.py")
        with pytest.raises(UsageError, match="no loaded plugin named 'other'.*cfg-plugin"):
            load_config("other::x.py")
        with pytest.raises(UsageError, match="lies outside plugin 'cfg-plugin'"):
            load_config(f"cfg-plugin::{os.path.relpath(base, tmp_path)}")  # ../../…
        with pytest.raises(UsageError, match="lies outside plugin 'cfg-plugin'"):
            load_config(f"cfg-plugin::{base}")
        assert main(["list", "configs"]) == 0
        assert "cfg-plugin::sub/tiny.py" in capsys.readouterr().out


def test_coprs_list_shows_components_with_origins(capsys):
    with isolated_plugins([_reward_plugin()]):
        assert main(["list", "rewards"]) == 0
        out = capsys.readouterr().out
        assert re.search(rf"MaskReward\s+coprs {re.escape(__version__)}", out)
        assert re.search(r"FakeReward\s+fake-plugin 1\.2", out)
        assert main(["list", "rewards", "mask*", "--json"]) == 0
        rows = json.loads(capsys.readouterr().out)["rewards"]
        assert [r["name"] for r in rows] == ["MaskReward"]
        assert rows[0]["object"] == "coprs.rewards.mask.MaskReward"
        assert main(["list", "--json"]) == 0
        everything = json.loads(capsys.readouterr().out)
        assert {"policies", "vision_backbones", "priors", "decoders", "rewards", "models",
                "datasets", "plugins", "configs"} <= set(everything)
        assert "SAMViTBackbone" in {r["name"] for r in everything["vision_backbones"]}
        assert everything["plugins"][0]["components"] == ["rewards:FakeReward"]


def test_coprs_list_unknown_kind_is_a_one_line_usage_error(capsys):
    assert main(["list", "backbones"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "unknown kind 'backbones'" in err and "vision_backbones" in err and "plugins" in err


def test_every_hook_is_documented():
    doc = (ROOT / "docs" / "plugins.md").read_text(encoding="utf-8")
    headings = set(re.findall(r"^#+ .*?`(\w+)", doc, flags=re.M))
    hooks = {n for n in dir(plugins.CoprsHookSpecs) if not n.startswith("_")}
    assert hooks == {*plugins.REGISTER_HOOKS, "register_modules", "config_dirs"}
    assert hooks <= headings, hooks - headings
