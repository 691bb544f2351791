"""Plugins: pluggy hooks and the ``coprs`` entry-point group.

A plugin is a separately installed package that declares an entry point in the group ``coprs``
(``[project.entry-points.coprs] my-plugin = "my_plugin.plugin"``); the object it names (usually a
module) implements some of the hooks of :class:`CoprsHookSpecs` with :data:`hookimpl`::

    from coprs.plugins import hookimpl

    @hookimpl
    def register_rewards(register):
        from .reward import BoundaryFScoreReward

        register(BoundaryFScoreReward)

Loading happens once, on the first registry lookup (``Registry.get`` / ``build``) or
:func:`coprs.utils.register_all_modules`, after the built-ins of the registry a plugin registers
into. Plugins load in order of entry-point name, then distribution name (never in install order),
so when two register one name the same one wins everywhere. ``COPRS_DISABLE_PLUGINS=1`` loads none;
``COPRS_PLUGINS=a,b`` loads only the plugins named (entry-point or distribution names),
``COPRS_PLUGINS=-c`` loads all but ``c``. A plugin that fails to import, raises in a hook, has a
hook coprs does not know (or with a wrong signature), implements no hook, registers a class that
does not derive from its kind's base class, or registers a name that already exists (status
``conflict``, both origins named, the one kept and why: nothing is replaced) is reported as a
:class:`PluginWarning` naming it and why, and is left out with everything it registered; the core
and every other plugin keep working.

See docs/plugins.md for a worked example.
"""

from __future__ import annotations

import contextlib
import difflib
import importlib
import importlib.metadata
import os
import re
import threading
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pluggy

from . import __version__
from .registry import ALL_REGISTRIES, COMPONENT_REGISTRIES

__all__ = [
    "hookspec", "hookimpl", "CoprsHookSpecs", "PluginInfo", "PluginWarning", "seen_plugins",
    "PluginConflictError", "ENTRY_POINT_GROUP", "load_plugins", "unload_plugins", "plugins",
    "origin_of", "config_dirs", "resolve_config", "plugins_disabled", "LocalPlugin",
    "isolated_plugins", "not_loaded",
]

ENTRY_POINT_GROUP = "coprs"
hookspec = pluggy.HookspecMarker("coprs")
hookimpl = pluggy.HookimplMarker("coprs")

#: the hooks that register into one component registry each: hook name → ALL_REGISTRIES key
REGISTER_HOOKS = {f"register_{kind}": kind for kind in COMPONENT_REGISTRIES}

#: the base class (``module``, ``name``) every class registered into a component kind derives
#: from; the registries coprs inherits from mmengine (optimizers, hooks, …) are not checked
BASE_CLASSES = {
    "policies": ("coprs.policies", "BasePolicy"),
    "vision_backbones": ("coprs.backbones", "BaseVisionBackbone"),
    "priors": ("coprs.priors", "BasePrior"),
    "decoders": ("coprs.decoders", "BaseDecoder"),
    "rewards": ("coprs.rewards", "BaseReward"),
    "rollout_engines": ("coprs.rollout", "BaseRolloutEngine"),
    "cot_judges": ("coprs.evaluation.consistency", "BaseCoTJudge"),
}


class CoprsHookSpecs:
    """The hooks a coprs plugin can implement (each one is optional).

    Every ``register_<kind>`` hook receives a ``register(cls, name=None)`` callable that adds
    ``cls`` to that registry under ``name`` (default: the class name) and records the plugin as
    its origin (``coprs list`` shows it); ``cls`` must derive from the kind's base class
    (:data:`BASE_CLASSES`).
    """

    @hookspec
    def register_policies(self, register: Callable) -> None:
        """Register policies (multimodal LLMs) into ``POLICIES`` (contract:
        :class:`coprs.policies.BasePolicy`)."""

    @hookspec
    def register_vision_backbones(self, register: Callable) -> None:
        """Register frozen image encoders into ``VISION_BACKBONES`` (contract:
        :class:`coprs.backbones.BaseVisionBackbone`)."""

    @hookspec
    def register_priors(self, register: Callable) -> None:
        """Register prior interfaces into ``PRIORS`` (contract: :class:`coprs.priors.BasePrior`)."""

    @hookspec
    def register_decoders(self, register: Callable) -> None:
        """Register mask decoders into ``DECODERS`` (contract:
        :class:`coprs.decoders.BaseDecoder`)."""

    @hookspec
    def register_rewards(self, register: Callable) -> None:
        """Register GRPO rewards into ``REWARDS`` (contract: :class:`coprs.rewards.BaseReward`)."""

    @hookspec
    def register_rollout_engines(self, register: Callable) -> None:
        """Register rollout engines into ``ROLLOUT_ENGINES`` (contract:
        :class:`coprs.rollout.BaseRolloutEngine`)."""

    @hookspec
    def register_cot_judges(self, register: Callable) -> None:
        """Register chain-of-thought judges into ``COT_JUDGES`` (contract:
        :class:`coprs.evaluation.consistency.BaseCoTJudge`)."""

    @hookspec
    def register_modules(self, register: Callable) -> None:
        """Register into any registry: ``register(kind, cls, name=None)``, ``kind`` a key of
        :data:`coprs.registry.ALL_REGISTRIES` (``'datasets'``, ``'transforms'``,
        ``'metrics'``, ``'hooks'``, …, or a component kind)."""

    @hookspec
    def config_dirs(self) -> str | Path | list[str | Path] | None:
        """Directories of configs this plugin ships; ``coprs`` commands accept a config in one of
        them as ``PLUGIN::relative/path.py`` (``coprs list configs`` lists them)."""


class PluginWarning(UserWarning):
    """A plugin could not be loaded; coprs goes on without it."""


class PluginConflictError(ValueError):
    """A plugin registered a name that a built-in or another plugin already has (the plugin is
    then left out with status 'conflict')."""


class _Refused(Exception):
    """A plugin that coprs does not load; the message says why, in one line."""


@dataclass
class PluginInfo:
    """One entry point of the ``coprs`` group and what became of it.

    Attributes:
        name: the entry-point name (used in ``PLUGIN::path`` config references).
        dist: the distribution that declares it (``pip install`` name), version included.
        status: 'loaded', 'failed', 'conflict' (it registers a name that exists already),
            'disabled' (``COPRS_DISABLE_PLUGINS``) or 'skipped' (left out by ``COPRS_PLUGINS``).
        error: why it is not loaded, for every status but 'loaded'.
        components: ``(kind, name)`` of everything it registered.
        config_dirs: the config directories it contributes.
    """

    name: str
    dist: str
    version: str
    status: str = "loaded"
    error: str | None = None
    components: list[tuple[str, str]] = field(default_factory=list)
    config_dirs: list[Path] = field(default_factory=list)
    #: its name in the pluggy manager: the entry-point name, made unique when two distributions
    #: declare one entry-point name (so that each is loaded, and left out, on its own)
    _hook_name: str = field(default="", init=False, repr=False, compare=False)

    @property
    def label(self) -> str:
        """``'coprs-timm 0.1.0'`` (the distribution), plus the entry point if named otherwise."""
        own = f"{self.dist} {self.version}"
        return own if self.name == self.dist else f"{own} (entry point {self.name!r})"


class _State:
    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.override: list | None = None  # entry points given by isolated_plugins()
        self.reset()

    def reset(self) -> None:
        self.started = False  # loading began (a lookup during loading returns at once)
        self.done = False  # loading finished
        self.plugins: list[PluginInfo] = []
        self.origins: dict[tuple[str, str], PluginInfo] = {}  # (kind, name) → plugin
        self.pm: pluggy.PluginManager | None = None
        self.pending: list[str] = []  # warnings to give once loading is done


_STATE = _State()


def _entry_points() -> Iterable[Any]:
    """The entry points of the ``coprs`` group (:func:`isolated_plugins` replaces them)."""
    if _STATE.override is not None:
        return _STATE.override
    return importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)


class LocalPlugin:
    """An entry point made in code, for :func:`isolated_plugins` in tests.

    Args:
        name: the entry-point name.
        obj: the plugin object (a module, or any object with :data:`hookimpl` functions).
        loader: instead of ``obj``, a callable that returns it (it may raise, as a failing
            import does).
        dist: distribution name (default: ``name``).
        version: distribution version.
    """

    def __init__(self, name: str, obj: Any = None, *, loader: Callable[[], Any] | None = None,
                 dist: str | None = None, version: str = "0.0") -> None:
        self.name, self._obj, self._loader = name, obj, loader
        self.dist = SimpleNamespace(name=dist or name, version=version)

    def load(self) -> Any:
        return self._loader() if self._loader is not None else self._obj


@contextlib.contextmanager
def isolated_plugins(entry_points: Iterable[Any] = ()) -> Iterator[None]:
    """Inside this context coprs sees only ``entry_points`` (``importlib.metadata`` entry points
    or :class:`LocalPlugin`), loaded on the next lookup; on exit their registrations are removed
    and the installed plugins load again on the next lookup. For tests::

        with isolated_plugins([LocalPlugin("my-plugin", my_plugin_module)]):
            assert REWARDS.get("MyReward") is MyReward
    """
    with _STATE.lock:
        unload_plugins()
        _STATE.override = list(entry_points)
    try:
        yield
    finally:
        with _STATE.lock:
            unload_plugins()
            _STATE.override = None


def _norm(name: str) -> str:
    """Distribution-style normalisation: ``Coprs_Timm`` and ``coprs-timm`` are one name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _selection() -> tuple[set[str] | None, set[str]]:
    """``COPRS_PLUGINS`` as (names to load, None: all; names to leave out), normalised. Items are
    separated by commas and/or spaces; ``-name`` leaves a plugin out."""
    items = [v for v in re.split(r"[,\s]+", os.environ.get("COPRS_PLUGINS", "")) if v]
    allowed = {_norm(v) for v in items if not v.startswith("-")}
    denied = {_norm(v[1:]) for v in items if v.startswith("-") and v[1:]}
    return (allowed or None), denied


def plugins_disabled() -> bool:
    """True when ``COPRS_DISABLE_PLUGINS`` is set to 1 / true / yes."""
    return os.environ.get("COPRS_DISABLE_PLUGINS", "").strip().lower() in ("1", "true", "yes")


def origin_of(kind: str, name: str) -> str:
    """Where component ``name`` of registry ``kind`` comes from: ``'coprs 0.1.0'``, a plugin's
    ``'coprs-timm 0.1.0'``, or the module that registered it (user code)."""
    info = _STATE.origins.get((kind, name))
    if info is not None:
        return info.label
    obj = ALL_REGISTRIES[kind].module_dict.get(name)
    module = getattr(obj, "__module__", "") or ""
    if module == "coprs" or module.startswith("coprs."):
        return f"coprs {__version__}"
    return f"module {module}" if module else "unknown"


def _path(obj: Any, name: str) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', name)}"


def _describe(kind: str, name: str) -> str:
    return f"{origin_of(kind, name)} ({_path(ALL_REGISTRIES[kind].module_dict.get(name), name)})"


def _check_base(kind: str, cls: Any, name: str) -> None:
    """Refuse ``cls`` unless it is a class deriving from ``kind``'s base class."""
    if kind not in BASE_CLASSES:
        return
    module, attr = BASE_CLASSES[kind]
    base = getattr(importlib.import_module(module), attr)
    if isinstance(cls, type) and issubclass(cls, base):
        return
    what = "a class" if isinstance(cls, type) else f"a {type(cls).__name__}, not a class"
    raise _Refused(f"it registers {name!r} ({_path(cls, name)}, {what}) into {kind}, but "
                   f"everything registered there must be a class deriving from {module}.{attr}")


def _registrar(info: PluginInfo, kind: str | None) -> Callable:
    """The ``register`` callable handed to ``info``'s hooks (``kind`` None: register_modules)."""

    def add(kind: str, cls, name: str | None = None) -> None:
        if kind not in ALL_REGISTRIES:
            raise KeyError(f"unknown registry kind {kind!r}; valid kinds: "
                           f"{', '.join(ALL_REGISTRIES)}")
        registry = ALL_REGISTRIES[kind]
        registry.import_from_location()  # built-ins first, so a clash shows now
        name = name or getattr(cls, "__name__", None)
        if not name:
            raise TypeError(f"register({cls!r}) needs name=...")
        _check_base(kind, cls, name)
        parent = registry.parent  # mmengine's registries, which coprs's inherit from
        while parent is not None:
            parent.import_from_location()
            if name in parent.module_dict:
                obj = parent.module_dict[name]
                raise PluginConflictError(
                    f"plugin {info.label} registers {name!r} in the '{registry.scope}::"
                    f"{registry.name}' registry, which would hide {obj.__module__}."
                    f"{getattr(obj, '__qualname__', name)} that coprs gets from the "
                    f"'{parent.scope}::{parent.name}' registry. A plugin cannot replace a "
                    f"component: rename it (register(cls, name=...)), or leave this plugin out "
                    f"with COPRS_PLUGINS=-{info.name} (or uninstall {info.dist}).")
            parent = parent.parent
        if name in registry.module_dict:
            owner = _STATE.origins.get((kind, name))
            said = (f"plugin {info.label} registers {name!r} ({cls.__module__}."
                    f"{getattr(cls, '__qualname__', name)}) in the '{registry.scope}::"
                    f"{registry.name}' registry, which ")
            if owner is None or owner is info:  # a built-in, user code, or itself twice
                raise PluginConflictError(
                    f"{said}{_describe(kind, name)} already registered. A plugin cannot replace "
                    f"a component: rename it (register(cls, name=...)), or leave this plugin out "
                    f"with COPRS_PLUGINS=-{_exclusion(info, owner)} (or uninstall one of the "
                    "two packages).")
            kept, other = _exclusion(owner, info), _exclusion(info, owner)
            raise PluginConflictError(
                f"{said}plugin {_describe(kind, name)} already registered; {kept} is kept and "
                f"nothing is replaced: {_load_order_reason(owner, info)}, and the first to "
                f"register a name keeps it. To use {other}'s {name!r} instead, leave {kept} out "
                f"with COPRS_PLUGINS=-{kept} (with everything it registers); to keep {kept} "
                f"without this warning, leave {other} out with COPRS_PLUGINS=-{other}, or "
                "rename one of the two (register(cls, name=...)).")
        registry.register_module(name=name, module=cls)
        _STATE.origins[(kind, name)] = info
        info.components.append((kind, name))

    if kind is None:
        return add

    def register(cls, name: str | None = None) -> None:
        add(kind, cls, name)

    return register


def _rollback(info: PluginInfo) -> None:
    """Remove everything ``info`` registered."""
    for kind, name in info.components:
        ALL_REGISTRIES[kind].module_dict.pop(name, None)
        _STATE.origins.pop((kind, name), None)
    info.components.clear()
    info.config_dirs.clear()


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())  # pluggy's and others' multi-line messages
    return text if isinstance(exc, _Refused | PluginConflictError) else (
        f"{type(exc).__name__}: {text}")


def _fail(info: PluginInfo, what: str, exc: BaseException, status: str = "failed") -> None:
    """Leave ``info`` out (``what`` says what it did, '' if the error says it all) and queue the
    one-line warning."""
    _rollback(info)
    info.status, info.error = status, _one_line(exc)
    if _STATE.pm is not None and info._hook_name and _STATE.pm.has_plugin(info._hook_name):
        _STATE.pm.unregister(name=info._hook_name)
    error = info.error if info.error.endswith((".", "?")) else info.error + "."
    if status == "conflict":  # the error names the plugin and the fix already
        message = f"{error} It is not loaded; coprs and the other plugins work without it."
    else:
        message = (f"coprs plugin {info.label}{f' {what} and' if what else ''} is not loaded: "
                   f"{error} coprs and the other plugins work without it "
                   f"(COPRS_PLUGINS=-{info.name} leaves it out).")
    # warned once every plugin is loaded (load_plugins), so that warnings turned into errors
    # (python -W error, pytest's filterwarnings) cannot stop the plugins after this one
    _STATE.pending.append(message)


def _signature(name: str, argnames: Iterable[str]) -> str:
    return f"{name}({', '.join(argnames)})"


def _check_hooks(pm: pluggy.PluginManager, obj: Any) -> None:
    """Refuse a plugin with an unknown hook, a hook with an argument its spec lacks, or no hook
    at all, in one line each (pluggy's own messages span several lines)."""
    specs = {n: getattr(pm.hook, n).spec.argnames
             for n in dir(CoprsHookSpecs) if not n.startswith("_")}
    hooks = {n: opts for n in dir(obj) if (opts := pm.parse_hookimpl_opts(obj, n)) is not None}
    for name, opts in hooks.items():
        args = pluggy.HookImpl(obj, "", getattr(obj, name), opts).argnames
        if name not in specs and not opts.get("optionalhook"):
            close = difflib.get_close_matches(name, specs, n=1)
            hint = (f"did you mean {_signature(close[0], specs[close[0]])}?" if close else
                    "the hooks are " + ", ".join(_signature(n, a) for n, a in specs.items()))
            raise _Refused(f"{_signature(name, args)} is not a coprs hook; {hint}")
        extra = [a for a in args if a not in specs.get(name, args)]
        if extra:
            raise _Refused(f"its hook {_signature(name, args)} takes {', '.join(map(repr, extra))}, "
                           f"which the hook does not give; the signature is "
                           f"{_signature(name, specs[name])}")
    if hooks:
        return
    unmarked = [n for n in dir(obj) if (n.startswith("register_") or n == "config_dirs")
                and callable(getattr(obj, n, None))]
    if unmarked:
        cause = (f"{', '.join(unmarked)} is not marked @hookimpl (from coprs.plugins import "
                 "hookimpl)")
    elif hasattr(obj, "__path__"):
        cause = (f"the entry point names the package {obj.__name__}, whose __init__ holds no "
                 f"hook; point it at the module that does, such as {obj.__name__}.plugin, and "
                 "re-run pip install -e")
    else:
        cause = "no function of it is marked @hookimpl (from coprs.plugins import hookimpl)"
    raise _Refused(f"it implements no coprs hook, so it would register nothing: {cause}")


def _call_hooks(pm: pluggy.PluginManager, info: PluginInfo) -> None:
    """Run ``info``'s register hooks and collect its config dirs (exceptions propagate)."""
    for hook_name, kind in [*REGISTER_HOOKS.items(), ("register_modules", None)]:
        for impl in getattr(pm.hook, hook_name).get_hookimpls():
            if impl.plugin_name == info._hook_name:
                impl.function(*[_registrar(info, kind) for _ in impl.argnames])
    for impl in pm.hook.config_dirs.get_hookimpls():
        if impl.plugin_name != info._hook_name:
            continue
        dirs = impl.function()
        dirs = [] if dirs is None else [dirs] if isinstance(dirs, str | Path) else list(dirs)
        for d in dirs:
            if not Path(d).is_dir():
                raise FileNotFoundError(f"config_dirs() returned {str(d)!r}, not a directory")
            info.config_dirs.append(Path(d).resolve())


def _dist_of(ep) -> tuple[str, str]:
    dist = getattr(ep, "dist", None)
    if dist is None:
        return ep.name, "unknown"
    return dist.name, dist.version


def _load_order(ep) -> tuple[str, ...]:
    """The sort key plugins load by: entry-point name, then distribution name (both as
    ``COPRS_PLUGINS`` compares them, then as spelt), then version and target so that even a
    distribution seen twice has one place. Never the order ``importlib.metadata`` lists them in,
    which follows install order: the same installed plugins must give the same winner of a
    conflict on every machine."""
    dist, version = _dist_of(ep)
    return (_norm(ep.name), _norm(dist), ep.name, dist, version, str(getattr(ep, "value", "")))


def _load_order_reason(first: PluginInfo, later: PluginInfo) -> str:
    """Why ``first`` loaded before ``later``, in words (see :func:`_load_order`)."""
    rule = "plugins load in order of entry-point name, then distribution name"
    if _norm(first.name) != _norm(later.name):
        return f"{rule} ({first.name!r} comes before {later.name!r})"
    if _norm(first.dist) != _norm(later.dist):
        return (f"{rule} (both entry points are named {first.name!r}; distribution "
                f"{first.dist!r} comes before {later.dist!r})")
    return f"{rule} (the same for both; {first.version!r} comes before {later.version!r})"


def _exclusion(info: PluginInfo, other: PluginInfo | None) -> str:
    """The ``COPRS_PLUGINS=-…`` name that leaves ``info`` out but not ``other``: its entry-point
    name, or its distribution name if ``other`` answers to the entry-point name too."""
    if other is None or other is info:
        return info.name
    theirs = {_norm(other.name), _norm(other.dist)}
    if _norm(info.name) not in theirs:
        return info.name
    return info.dist if _norm(info.dist) not in theirs else info.name


def _unknown_names(unknown: list[str], eps: list) -> list[str]:
    """Warnings for ``COPRS_PLUGINS`` names that are no plugin; an installed distribution without
    an entry point in the ``coprs`` group (a misspelt group) is said to be one."""
    plain, messages = [], []
    for name in unknown:
        try:
            dist = importlib.metadata.distribution(name)
            groups = sorted({ep.group for ep in dist.entry_points})
        except Exception:  # noqa: BLE001 - not installed (or unreadable): a plain typo
            dist = None
        if dist is None or ENTRY_POINT_GROUP in groups:
            plain.append(name)
            continue
        messages.append(
            f"COPRS_PLUGINS names {name}: that distribution is installed ({dist.version}) but "
            f"declares no entry point in the group '{ENTRY_POINT_GROUP}' "
            f"({'its groups: ' + ', '.join(groups) if groups else 'it declares none'}), so it is "
            "no coprs plugin; declare it under [project.entry-points.coprs] and re-run "
            "pip install -e")
    if plain:
        messages.insert(0, f"COPRS_PLUGINS names {', '.join(plain)}, which no installed plugin "
                           f"is; installed: {', '.join(sorted(ep.name for ep in eps)) or 'none'}")
    return messages


def load_plugins() -> list[PluginInfo]:
    """Load the ``coprs`` entry points once (later calls return the same list), in order of
    entry-point name, then distribution name, whatever order they were installed in: of two
    plugins that register one name, the first in that order keeps it.

    Returns:
        list[PluginInfo]: every entry point seen, in load order, with its status (a plugin that
        conflicts with a name registered already has status 'conflict' and is warned about, not
        raised).
    """
    if _STATE.done:  # every registry lookup comes here: be quick
        return _STATE.plugins
    with _STATE.lock:
        if _STATE.started:  # loaded, or loading further up this thread's stack
            return _STATE.plugins
        _STATE.started = True
        try:
            pm = pluggy.PluginManager("coprs")
            pm.add_hookspecs(CoprsHookSpecs)
            _STATE.pm = pm
            try:
                eps = sorted(_entry_points(), key=_load_order)  # never install order
            except Exception as exc:  # noqa: BLE001 - broken metadata must not break coprs
                if not plugins_disabled():
                    warnings.warn(f"coprs could not list its plugins: {exc}", PluginWarning,
                                  stacklevel=2)
                return _STATE.plugins
            if plugins_disabled():  # listed (coprs list plugins), never imported
                _STATE.plugins.extend(
                    PluginInfo(ep.name, *_dist_of(ep), status="disabled",
                               error="COPRS_DISABLE_PLUGINS is set") for ep in eps)
                return _STATE.plugins
            allowed, denied = _selection()
            names = {_norm(n) for ep in eps for n in (ep.name, _dist_of(ep)[0])}
            unknown = sorted(((allowed or set()) | denied) - names)
            _STATE.pending.extend(_unknown_names(unknown, eps))
            for ep in eps:
                dist, version = _dist_of(ep)
                info = PluginInfo(name=ep.name, dist=dist, version=version)
                _STATE.plugins.append(info)
                own = {_norm(ep.name), _norm(dist)}
                if own & denied:
                    info.status, info.error = "skipped", "excluded by COPRS_PLUGINS"
                    continue
                if allowed is not None and not own & allowed:
                    info.status, info.error = "skipped", "not named in COPRS_PLUGINS"
                    continue
                try:
                    obj = ep.load()
                except Exception as exc:  # noqa: BLE001 - report, keep going
                    _fail(info, "failed to import", exc)
                    continue
                info._hook_name = ep.name if not pm.has_plugin(ep.name) else (
                    f"{ep.name} ({dist} {version}, #{len(_STATE.plugins)})")
                try:
                    _check_hooks(pm, obj)
                    pm.register(obj, name=info._hook_name)
                    pm.check_pending()  # a hook name that is no hook of coprs
                    _call_hooks(pm, info)
                except PluginConflictError as exc:  # left out: the other plugins still load
                    _fail(info, "", exc, "conflict")
                except _Refused as exc:
                    _fail(info, "", exc)
                except Exception as exc:  # noqa: BLE001 - report, keep going
                    _fail(info, "raised while registering", exc)
            return _STATE.plugins
        finally:
            _STATE.done = True
            pending, _STATE.pending = _STATE.pending, []
            for message in pending:
                warnings.warn(message, PluginWarning, stacklevel=3)


def unload_plugins() -> None:
    """Forget every plugin and remove what they registered; the next lookup loads them again.

    For tests (register fake plugins inside a fixture) and long-lived processes that installed a
    plugin after start.
    """
    with _STATE.lock:
        for info in _STATE.plugins:
            _rollback(info)
        _STATE.reset()


def seen_plugins() -> list[PluginInfo]:
    """The entry points the last load saw, with their status, without loading again (for
    reports such as ``coprs collect-env``)."""
    return list(_STATE.plugins)


def not_loaded() -> list[str]:
    """``'coprs-areaprior 0.2.0 is installed but not loaded: excluded by COPRS_PLUGINS'`` for
    every plugin of the last load that is not loaded (for errors about a missing component);
    entry points of one distribution with one reason make one line, and a reason its first
    sentence (``coprs list plugins`` has it whole)."""
    groups: dict[tuple[str, str, str], list[PluginInfo]] = {}
    for p in _STATE.plugins:
        if p.status != "loaded":
            reason = (p.error or p.status).split(". ")[0].rstrip(".")
            groups.setdefault((p.dist, p.version, reason), []).append(p)
    lines = []
    for (dist, version, reason), ps in groups.items():
        who = ps[0].label if len(ps) == 1 else (
            f"{dist} {version} (entry points {', '.join(p.name for p in ps)})")
        lines.append(f"{who} is installed but not loaded: {reason}")
    return lines


def plugins() -> list[PluginInfo]:
    """Every entry point of the ``coprs`` group with its status (loads them if needed)."""
    return load_plugins()


def config_dirs() -> dict[str, list[Path]]:
    """``{plugin name: [config directory, …]}`` of the loaded plugins."""
    return {p.name: list(p.config_dirs) for p in load_plugins() if p.config_dirs}


def resolve_config(spec: str) -> Path:
    """``'PLUGIN::relative/path.py'`` → the file in one of that plugin's config directories.

    Raises:
        FileNotFoundError: unknown plugin, plugin without configs, or no such file (the message
            lists what exists).
    """
    name, _, rel = spec.partition("::")
    dirs = config_dirs()
    if name not in dirs:
        missing = [p for p in _STATE.plugins if p.status != "loaded"
                   and _norm(name) in (_norm(p.name), _norm(p.dist))]
        if missing:
            raise FileNotFoundError(f"config '{spec}': plugin {missing[0].label} is installed "
                                    f"but not loaded: {missing[0].error or missing[0].status} "
                                    "(`coprs list plugins`)")
        known = ", ".join(sorted(dirs)) or "none"
        raise FileNotFoundError(f"config '{spec}': no loaded plugin named {name!r} ships configs "
                                f"(plugins with configs: {known}; `coprs list configs`)")
    for d in dirs[name]:
        if (d / rel).is_file():
            if not (d / rel).resolve().is_relative_to(d.resolve()):
                raise FileNotFoundError(f"config '{spec}' lies outside plugin {name!r}'s config "
                                        f"folder {d}; give a path inside it")
            return d / rel
    have = sorted(str(p.relative_to(d)) for d in dirs[name] for p in d.rglob("*.py"))
    raise FileNotFoundError(f"config '{spec}': plugin {name!r} has no {rel!r}; it ships "
                            f"{', '.join(have) or 'no .py files'}")
