"""Plugins: entry-point loading, failure isolation, conflicts, switches, config dirs, `coprs list`,
the checks of what a plugin registers and the messages that say why a plugin is not loaded.

Every test sees only the fake plugins it names (``isolated_plugins``), never the installed ones.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import os
import re
import subprocess
import sys
import types
import warnings
from pathlib import Path

import pytest
import torch

from coprs import __version__, plugins
from coprs.cli import main
from coprs.plugins import (
    LocalPlugin,
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


def _base(kind):
    module, attr = plugins.BASE_CLASSES[kind]
    return getattr(importlib.import_module(module), attr)


@pytest.mark.parametrize("hook, kind", sorted(plugins.REGISTER_HOOKS.items()))
def test_every_register_hook_registers_into_its_registry(hook, kind):
    class Thing(_base(kind)):
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
        assert {i.name: i.status for i in infos} == {
            "broken": "failed", "raiser": "failed", "typo": "failed", "fake-plugin": "loaded"}
        assert REWARDS.get("PartialReward") is None
        assert REWARDS.get("FakeReward") is FakeReward  # the healthy plugin
        assert REWARDS.get("MaskReward") is not None  # and the core


class ClashPlugin:
    """Registers one reward of its own, then one under a built-in's name."""

    @hookimpl
    def register_rewards(self, register):
        register(FakeReward, name="ClashOwnReward")  # rolled back with the plugin
        register(FakeReward, name="MaskReward")


def test_duplicate_name_leaves_the_plugin_out_naming_both_origins_and_the_fix(capsys):
    from coprs.rewards import MaskReward

    eps = [LocalPlugin("clash", ClashPlugin(), version="2.0"), _reward_plugin()]
    with isolated_plugins(eps):
        with pytest.warns(PluginWarning) as record:
            REWARDS.get("MaskReward")
        (msg,) = [str(w.message) for w in record]
        assert "plugin clash 2.0 registers 'MaskReward'" in msg and "FakeReward" in msg
        assert f"coprs {__version__} (coprs.rewards.mask.MaskReward)" in msg
        assert "coprs::reward" in msg and "COPRS_PLUGINS=-clash" in msg
        assert "\n" not in msg
        infos = load_plugins()
        assert [(i.name, i.status) for i in infos] == [("clash", "conflict"),
                                                       ("fake-plugin", "loaded")]
        assert infos[0].error.startswith("plugin clash 2.0 registers 'MaskReward'")
        assert REWARDS.get("MaskReward") is MaskReward  # never overridden
        assert REWARDS.get("ClashOwnReward") is None  # the plugin's other names rolled back
        assert REWARDS.get("FakeReward") is FakeReward  # the plugin after it loaded
        assert main(["list", "plugins"]) == 0  # the table, with the conflict marked
        out = capsys.readouterr().out
        assert re.search(r"clash\s+clash 2\.0\s+\[conflict\]: plugin clash 2\.0 registers "
                         r"'MaskReward'", out)
        assert re.search(r"fake-plugin\s+fake-plugin 1\.2\s+\[loaded\]", out)
    with isolated_plugins(eps), pytest.MonkeyPatch.context() as mp:
        mp.setenv("COPRS_PLUGINS", "-clash")  # the fix the message names: no warning
        with warnings.catch_warnings():
            warnings.simplefilter("error", PluginWarning)
            infos = load_plugins()
        assert [(i.status, i.error) for i in infos] == [
            ("skipped", "excluded by COPRS_PLUGINS"), ("loaded", None)]


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
        with pytest.warns(PluginWarning, match=r"plugin shadow 0\.0 registers 'AdamW'.*"
                                               r"would hide torch\.optim.*AdamW"):
            assert load_plugins()[0].status == "conflict"
    with isolated_plugins([LocalPlugin("shadow-hook", ShadowHook())]):
        with pytest.warns(PluginWarning, match="would hide mmengine.*COPRS_PLUGINS=-shadow-hook"):
            load_plugins()
    assert OPTIMIZERS.get("AdamW") is torch.optim.AdamW
    assert HOOKS.get("IterTimerHook") is IterTimerHook


def test_warnings_as_errors_do_not_stop_the_plugins_after_a_broken_one():
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
        assert main(["collect-env"]) == 0  # the warning goes to stderr, in one line
        out, err = capsys.readouterr()
        assert "warning: plugin second 2.0 registers 'FakeReward'" in err
        assert "coprs plugins: first 1.0 (loaded), second 2.0 (conflict)" in out
        assert "coprs plugin conflict (second): plugin second 2.0 registers 'FakeReward'" in out
        assert "PyTorch: " in out  # the rest of the report is there


def test_duplicate_between_two_plugins_names_both():
    with isolated_plugins([_reward_plugin("first", "1.0"), _reward_plugin("second", "2.0")]):
        with pytest.warns(PluginWarning, match=r"second 2\.0.*first 1\.0.*COPRS_PLUGINS=-second"):
            load_plugins()
        assert plugins.origin_of("rewards", "FakeReward") == "first 1.0"


class OtherFakeReward(BaseReward):
    """Another plugin's class under :class:`FakeReward`'s name."""

    name = "other-fake"


class OtherRewardPlugin:
    @hookimpl
    def register_rewards(self, register):
        register(OtherFakeReward, name="FakeReward")


@pytest.mark.parametrize("name_a, dist_a, name_b, dist_b, kept, other", [
    # the entry-point name decides ('alpha' < 'beta'), before the distribution name
    ("alpha", "pkg-z", "beta", "pkg-a", "alpha", "beta"),
    # one entry-point name in two distributions: the distribution name decides, and the messages
    # name the plugins by it (COPRS_PLUGINS=-rewards would leave out both)
    ("rewards", "pkg-a", "rewards", "pkg-b", "pkg-a", "pkg-b"),
])
def test_a_conflict_between_plugins_has_the_same_winner_whatever_the_install_order(
        name_a, dist_a, name_b, dist_b, kept, other):
    a = LocalPlugin(name_a, RewardPlugin(), dist=dist_a, version="1.0")  # first in load order
    b = LocalPlugin(name_b, OtherRewardPlugin(), dist=dist_b, version="2.0")
    messages = set()
    try:
        for eps in ([a, b], [b, a]):  # the order importlib.metadata lists them in
            with isolated_plugins(eps):
                with pytest.warns(PluginWarning) as record:
                    infos = load_plugins()
                assert REWARDS.get("FakeReward") is FakeReward  # a's, either way
                assert [(i.dist, i.status) for i in infos] == [(dist_a, "loaded"),
                                                               (dist_b, "conflict")]
                (msg,) = [str(w.message) for w in record]
                messages.add(msg)
                assert "\n" not in msg
                assert msg.startswith(f"plugin {b.dist.name} 2.0")  # both plugins named …
                assert f"which plugin {dist_a} 1.0" in msg
                assert "'FakeReward'" in msg and "'coprs::reward' registry" in msg  # … and what
                assert f"; {kept} is kept and nothing is replaced: " in msg  # which one, why
                assert "plugins load in order of entry-point name, then distribution name" in msg
                assert f"{kept!r} comes before {other!r}" in msg
                assert (f"To use {other}'s 'FakeReward' instead, leave {kept} out with "
                        f"COPRS_PLUGINS=-{kept} ") in msg  # how to get the other one
                assert f"leave {other} out with COPRS_PLUGINS=-{other}," in msg
                assert infos[1].error == msg.removesuffix(
                    " It is not loaded; coprs and the other plugins work without it.")
        assert len(messages) == 1  # word for word the same either way
        with pytest.MonkeyPatch.context() as mp, isolated_plugins([b, a]):
            mp.setenv("COPRS_PLUGINS", f"-{kept}")  # the fix the message gives: no warning
            with warnings.catch_warnings():
                warnings.simplefilter("error", PluginWarning)
                assert REWARDS.get("FakeReward") is OtherFakeReward
                assert [i.status for i in load_plugins()] == ["skipped", "loaded"]
    finally:
        plugins.unload_plugins()
        REWARDS.module_dict.pop("FakeReward", None)  # never left behind, even on a failure
    assert "FakeReward" not in REWARDS.module_dict


def test_disable_and_allow_list_switches(monkeypatch, capsys):
    with isolated_plugins([_reward_plugin(), _reward_plugin("other", "0.1")]):
        monkeypatch.setenv("COPRS_DISABLE_PLUGINS", "1")
        assert [(i.name, i.status) for i in load_plugins()] == [("fake-plugin", "disabled"),
                                                               ("other", "disabled")]
        assert REWARDS.get("FakeReward") is None
        assert main(["list", "plugins"]) == 0
        out = capsys.readouterr().out
        assert "(disabled: COPRS_DISABLE_PLUGINS is set)" in out
        assert re.search(r"other\s+other 0\.1\s+\[disabled\]", out)
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
        "from coprs.rewards import BaseReward\n"
        "class ModuleReward(BaseReward):\n    pass\n"
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


# --- what a plugin registers, and why a plugin is not loaded ------------------------------------


def _warned_about(eps, name):
    """Load ``eps``; the one warning that names plugin ``name``."""
    with isolated_plugins(eps):
        with pytest.warns(PluginWarning) as record:
            load_plugins()
    (msg,) = [str(w.message) for w in record if f"plugin {name} " in str(w.message)]
    assert "\n" not in msg  # the docs promise one line
    return msg


def test_every_component_kind_has_a_base_class_its_built_ins_derive_from():
    assert set(plugins.BASE_CLASSES) == set(COMPONENT_REGISTRIES)
    for kind, registry in COMPONENT_REGISTRIES.items():
        for name in registry.registered_names():
            assert issubclass(registry.module_dict[name], _base(kind)), (kind, name)


@pytest.mark.parametrize("obj, shown", [(type("NotAReward", (), {}), "NotAReward, a class"),
                                        (lambda **kw: None, "a function, not a class")])
def test_a_component_that_does_not_derive_from_its_base_class_fails_its_plugin(obj, shown):
    class Wrong:
        @hookimpl
        def register_rewards(self, register):
            register(FakeReward, name="BeforeTheWrongOne")  # rolled back
            register(obj, name="WrongReward")

    class Unchecked:  # mmengine's kinds are not checked
        @hookimpl
        def register_modules(self, register):
            register("hooks", type("AnyHook", (), {}))

    eps = [LocalPlugin("wrong", Wrong()), LocalPlugin("unchecked", Unchecked()),
           _reward_plugin()]
    msg = _warned_about(eps, "wrong 0.0")
    assert "'WrongReward'" in msg and shown in msg and "coprs.rewards.BaseReward" in msg
    with isolated_plugins(eps), pytest.warns(PluginWarning):
        assert {i.name: i.status for i in load_plugins()} == {
            "wrong": "failed", "unchecked": "loaded", "fake-plugin": "loaded"}
        assert REWARDS.get("WrongReward") is None and REWARDS.get("BeforeTheWrongOne") is None
        assert REWARDS.get("FakeReward") is FakeReward


def test_a_plugin_with_no_hook_is_said_to_be_one_with_the_likely_cause():
    unmarked = types.ModuleType("unmarked_plugin")
    unmarked.register_rewards = lambda register: register(FakeReward)  # no @hookimpl
    package = types.ModuleType("some_package")
    package.__path__ = []  # the entry point names a package whose __init__ has no hook
    eps = [LocalPlugin("unmarked", unmarked), LocalPlugin("package", package),
           LocalPlugin("nothing", object()), _reward_plugin()]
    assert "register_rewards is not marked @hookimpl" in _warned_about(eps, "unmarked 0.0")
    msg = _warned_about(eps, "package 0.0")
    assert "implements no coprs hook" in msg and "names the package some_package" in msg
    assert "some_package.plugin" in msg
    assert "no function of it is marked @hookimpl" in _warned_about(eps, "nothing 0.0")
    with isolated_plugins(eps), pytest.warns(PluginWarning):
        assert {i.name: i.status for i in load_plugins()} == {
            "unmarked": "failed", "package": "failed", "nothing": "failed",
            "fake-plugin": "loaded"}


def test_unknown_hook_gets_a_did_you_mean_and_a_wrong_signature_one_line():
    class Typo:
        @hookimpl
        def register_reward(self, register):
            pass

    class ExtraArg:
        @hookimpl
        def register_rewards(self, register, registry):
            pass

    class Renamed:
        @hookimpl
        def config_dirs(self, root):
            pass

    eps = [LocalPlugin("typo", Typo()), LocalPlugin("extra", ExtraArg()),
           LocalPlugin("renamed", Renamed())]
    assert ("register_reward(register) is not a coprs hook; did you mean "
            "register_rewards(register)?" in _warned_about(eps, "typo 0.0"))
    msg = _warned_about(eps, "extra 0.0")
    assert "register_rewards(register, registry) takes 'registry'" in msg
    assert "the signature is register_rewards(register)" in msg
    assert "the signature is config_dirs()" in _warned_about(eps, "renamed 0.0")


def test_deny_syntax_combines_with_the_allow_list_by_entry_point_or_distribution(monkeypatch):
    eps = [_reward_plugin("a"), LocalPlugin("b", loader=lambda: 1 / 0, dist="dist-b"),
           LocalPlugin("c", RewardPlugin())]
    cases = {"-b": ["loaded", "skipped", "conflict"],  # c clashes with a: warned, left out
             "-dist_b -c": ["loaded", "skipped", "skipped"],  # distribution names normalised
             "a, c,-a": ["skipped", "skipped", "loaded"]}  # a deny beats an allow
    for value, statuses in cases.items():
        monkeypatch.setenv("COPRS_PLUGINS", value)
        with isolated_plugins(eps):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", PluginWarning)
                infos = load_plugins()
            assert [i.status for i in infos] == statuses, value
            assert all(i.error in (None, "excluded by COPRS_PLUGINS", "not named in COPRS_PLUGINS")
                       for i in infos if i.status != "conflict")
    monkeypatch.setenv("COPRS_PLUGINS", "-nope,-b,-c")  # a typo in a deny is said too
    with isolated_plugins(eps), pytest.warns(PluginWarning, match="COPRS_PLUGINS names nope, "
                                                                  "which no installed plugin"):
        load_plugins()


def test_coprs_plugins_naming_a_distribution_without_a_coprs_entry_point_says_so(monkeypatch):
    monkeypatch.setenv("COPRS_PLUGINS", "pluggy")  # installed, but no plugin of coprs
    with isolated_plugins([_reward_plugin()]):
        with pytest.warns(PluginWarning, match=r"COPRS_PLUGINS names pluggy: that distribution "
                                               r"is installed \(.*\) but declares no entry "
                                               r"point in the group 'coprs'"):
            load_plugins()


def test_unknown_type_and_plugin_config_errors_list_the_plugins_not_loaded(monkeypatch, tmp_path):
    from coprs.commands.common import UsageError, load_config

    class Configs:
        @hookimpl
        def config_dirs(self):
            return tmp_path

    eps = [LocalPlugin("areaprior", RewardPlugin(), dist="coprs-areaprior", version="0.2.0"),
           LocalPlugin("cfgs", Configs(), version="0.3")]
    monkeypatch.setenv("COPRS_PLUGINS", "-coprs-areaprior,-cfgs")
    with isolated_plugins(eps):
        with pytest.raises(KeyError) as err:
            REWARDS.build(dict(type="FakeReward"))
        msg = err.value.args[0]
        assert "'FakeReward' is not registered" in msg
        assert ("coprs-areaprior 0.2.0 (entry point 'areaprior') is installed but not loaded: "
                "excluded by COPRS_PLUGINS" in msg)
        with pytest.raises(UsageError, match=r"plugin cfgs 0\.3 is installed but not loaded: "
                                             r"excluded by COPRS_PLUGINS"):
            load_config("cfgs::x.py")
    monkeypatch.delenv("COPRS_PLUGINS")
    with isolated_plugins([LocalPlugin("broken", loader=lambda: 1 / 0)]):
        with pytest.warns(PluginWarning), pytest.raises(KeyError, match="broken 0.0 is installed "
                                                        "but not loaded: ZeroDivisionError"):
            REWARDS.build(dict(type="FakeReward"))
    with isolated_plugins([]):
        with pytest.raises(KeyError) as err:
            REWARDS.build(dict(type="FakeReward"))
        assert "installed but not loaded" not in err.value.args[0]


def test_python_dash_m_coprs_runs_the_coprs_command():
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COPRS_DISABLE_PLUGINS": "1"}
    done = subprocess.run([sys.executable, "-m", "coprs", "--version"], capture_output=True,
                          text=True, env=env, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"coprs {__version__}"


def test_the_docs_name_every_base_class_status_and_switch():
    doc = (ROOT / "docs" / "plugins.md").read_text(encoding="utf-8")
    for module, attr in plugins.BASE_CLASSES.values():
        assert f"`{module}.{attr}`" in doc, attr
    for status in ("loaded", "failed", "conflict", "skipped", "disabled"):
        assert f"`{status}`" in doc, status
    assert "COPRS_PLUGINS=-" in doc and "## My plugin does not show up" in doc
    assert "using_coprs_home" in doc and "is listed next to the built-in rewards" in doc
