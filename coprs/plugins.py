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
into. ``COPRS_DISABLE_PLUGINS=1`` loads none; ``COPRS_PLUGINS=a,b`` loads only the plugins named
(entry-point names). A plugin that fails to import or raises in a hook is reported as a
:class:`PluginWarning` naming it and its error, and is left out; the core and every other plugin
keep working. A plugin that registers a name that already exists raises
:class:`PluginConflictError` naming both origins: nothing is silently replaced.

See docs/plugins.md for a worked example.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
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
    "isolated_plugins",
]

ENTRY_POINT_GROUP = "coprs"
hookspec = pluggy.HookspecMarker("coprs")
hookimpl = pluggy.HookimplMarker("coprs")

#: the hooks that register into one component registry each: hook name → ALL_REGISTRIES key
REGISTER_HOOKS = {f"register_{kind}": kind for kind in COMPONENT_REGISTRIES}


class CoprsHookSpecs:
    """The hooks a coprs plugin can implement (each one is optional).

    Every ``register_<kind>`` hook receives a ``register(cls, name=None)`` callable that adds
    ``cls`` to that registry under ``name`` (default: the class name) and records the plugin as
    its origin (``coprs list`` shows it).
    """

    @hookspec
    def register_policies(self, register: Callable) -> None:
        """Register policies (multimodal LLMs) into ``POLICIES``."""

    @hookspec
    def register_vision_backbones(self, register: Callable) -> None:
        """Register frozen image encoders into ``VISION_BACKBONES`` (contract:
        :class:`coprs.backbones.BaseVisionBackbone`)."""

    @hookspec
    def register_priors(self, register: Callable) -> None:
        """Register prior interfaces into ``PRIORS``."""

    @hookspec
    def register_decoders(self, register: Callable) -> None:
        """Register mask decoders into ``DECODERS``."""

    @hookspec
    def register_rewards(self, register: Callable) -> None:
        """Register GRPO rewards into ``REWARDS`` (contract: :class:`coprs.rewards.BaseReward`)."""

    @hookspec
    def register_rollout_engines(self, register: Callable) -> None:
        """Register rollout engines into ``ROLLOUT_ENGINES``."""

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
    """A plugin registered a name that a built-in or another plugin already has."""


@dataclass
class PluginInfo:
    """One entry point of the ``coprs`` group and what became of it.

    Attributes:
        name: the entry-point name (used in ``PLUGIN::path`` config references).
        dist: the distribution that declares it (``pip install`` name), version included.
        status: 'loaded', 'failed', 'disabled' or 'skipped' (not in ``COPRS_PLUGINS``).
        error: why it failed, for 'failed'.
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
        self.error: PluginConflictError | None = None
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


def _env_list(name: str) -> list[str] | None:
    value = os.environ.get(name, "").strip()
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


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


def _describe(kind: str, name: str) -> str:
    obj = ALL_REGISTRIES[kind].module_dict.get(name)
    where = f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', name)}"
    return f"{origin_of(kind, name)} ({where})"


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
                    "component: rename it (register(cls, name=...)) or uninstall the plugin; "
                    "COPRS_DISABLE_PLUGINS=1 runs coprs without plugins.")
            parent = parent.parent
        if name in registry.module_dict:
            raise PluginConflictError(
                f"plugin {info.label} registers {name!r} ({cls.__module__}."
                f"{getattr(cls, '__qualname__', name)}) in the '{registry.scope}::"
                f"{registry.name}' registry, which {_describe(kind, name)} already registered. "
                "A plugin cannot replace a component: rename it (register(cls, name=...)) or "
                "uninstall one of the two packages; COPRS_DISABLE_PLUGINS=1 runs coprs without "
                "plugins.")
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


def _fail(info: PluginInfo, what: str, exc: BaseException) -> None:
    _rollback(info)
    info.status, info.error = "failed", f"{type(exc).__name__}: {exc}"
    if _STATE.pm is not None and _STATE.pm.has_plugin(info.name):
        _STATE.pm.unregister(name=info.name)
    # warned once every plugin is loaded (load_plugins), so that warnings turned into errors
    # (python -W error, pytest's filterwarnings) cannot stop the plugins after this one
    _STATE.pending.append(f"coprs plugin {info.label} {what} and is not loaded: {info.error}. "
                          "coprs and the other plugins work without it "
                          "(COPRS_DISABLE_PLUGINS=1 loads no plugin).")


def _call_hooks(pm: pluggy.PluginManager, info: PluginInfo) -> None:
    """Run ``info``'s register hooks and collect its config dirs (exceptions propagate)."""
    for hook_name, kind in [*REGISTER_HOOKS.items(), ("register_modules", None)]:
        for impl in getattr(pm.hook, hook_name).get_hookimpls():
            if impl.plugin_name == info.name:
                impl.function(*[_registrar(info, kind) for _ in impl.argnames])
    for impl in pm.hook.config_dirs.get_hookimpls():
        if impl.plugin_name != info.name:
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


def load_plugins() -> list[PluginInfo]:
    """Load the ``coprs`` entry points once (later calls return the same list).

    Returns:
        list[PluginInfo]: every entry point seen, with its status.

    Raises:
        PluginConflictError: a plugin registered a name that exists already (raised again on
            every call until the conflict is resolved and the process restarted).
    """
    if _STATE.done and _STATE.error is None:  # every registry lookup comes here: be quick
        return _STATE.plugins
    with _STATE.lock:
        if _STATE.error is not None:
            raise _STATE.error
        if _STATE.started:  # loaded, or loading further up this thread's stack
            return _STATE.plugins
        _STATE.started = True
        try:
            pm = pluggy.PluginManager("coprs")
            pm.add_hookspecs(CoprsHookSpecs)
            _STATE.pm = pm
            if plugins_disabled():
                return _STATE.plugins
            allowed = _env_list("COPRS_PLUGINS")
            try:
                eps = list(_entry_points())
            except Exception as exc:  # noqa: BLE001 - broken metadata must not break coprs
                warnings.warn(f"coprs could not list its plugins: {exc}", PluginWarning,
                              stacklevel=2)
                return _STATE.plugins
            if allowed is not None:
                names = {n for ep in eps for n in (ep.name, _dist_of(ep)[0])}
                unknown = sorted(set(allowed) - names)
                if unknown:
                    _STATE.pending.append(
                        f"COPRS_PLUGINS names {', '.join(unknown)}, which no installed plugin "
                        f"is; installed: {', '.join(sorted(ep.name for ep in eps)) or 'none'}")
            for ep in eps:
                dist, version = _dist_of(ep)
                info = PluginInfo(name=ep.name, dist=dist, version=version)
                _STATE.plugins.append(info)
                if allowed is not None and ep.name not in allowed and dist not in allowed:
                    info.status = "skipped"
                    continue
                try:
                    obj = ep.load()
                except Exception as exc:  # noqa: BLE001 - report, keep going
                    _fail(info, "failed to import", exc)
                    continue
                try:
                    pm.register(obj, name=ep.name)
                    pm.check_pending()  # a hook name that is no hook of coprs
                    _call_hooks(pm, info)
                except PluginConflictError as exc:
                    _rollback(info)
                    info.status, info.error = "failed", str(exc)
                    _STATE.error = exc
                    raise
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
    """The entry points the last load saw, with their status, without loading again or raising
    a conflict again (for reports such as ``coprs collect-env``)."""
    return list(_STATE.plugins)


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
