"""``coprs list``: every registered component per registry, with its origin (core or plugin)."""

from __future__ import annotations

import fnmatch
import json

from .common import UsageError

__all__ = ["add_parser", "run", "collect", "EXTRA_KINDS"]

#: what ``coprs list KIND`` accepts besides the registry names
EXTRA_KINDS = ("plugins", "configs")


def add_parser(sub) -> None:
    p = sub.add_parser(
        "list",
        help="list registered components and where they come from (core or a plugin)",
        description="Print every component of every registry (or of one KIND) with its origin: "
                    "'coprs VERSION' for built-ins, 'DIST VERSION' for a plugin. KIND "
                    "'plugins' lists the installed plugins and their status, 'configs' the "
                    "configs plugins ship (use them as PLUGIN::path.py). COPRS_DISABLE_PLUGINS=1 "
                    "loads no plugin.",
        epilog="example: coprs list vision_backbones   (or: coprs list rewards '*Mask*' --json)",
    )
    p.add_argument("kind", nargs="?", metavar="KIND",
                   help="a registry (policies, vision_backbones, priors, decoders, rewards, "
                        "rollout_engines, datasets, transforms, metrics, hooks, …), 'plugins' or "
                        "'configs'; default: every registry")
    p.add_argument("pattern", nargs="?", metavar="PATTERN",
                   help="only names matching this shell-style wildcard (case-insensitive)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def collect(kind: str | None = None, pattern: str | None = None) -> dict:
    """``{kind: [{'name', 'origin', 'object'}, …]}`` (+ 'plugins' / 'configs' entries)."""
    from coprs import plugins
    from coprs.registry import ALL_REGISTRIES

    valid = [*ALL_REGISTRIES, *EXTRA_KINDS]
    if kind is not None and kind not in valid:
        raise UsageError(f"unknown kind '{kind}'; valid kinds: {', '.join(valid)}")
    infos = plugins.load_plugins()
    out: dict = {}
    for k, registry in ALL_REGISTRIES.items():
        if kind not in (None, k):
            continue
        rows = []
        for name in registry.registered_names():
            if pattern and not fnmatch.fnmatch(name.lower(), pattern.lower()):
                continue
            obj = registry.module_dict[name]
            rows.append(dict(name=name, origin=plugins.origin_of(k, name),
                             object=f"{obj.__module__}.{getattr(obj, '__qualname__', name)}"))
        out[k] = rows
    if kind in (None, "plugins"):
        out["plugins"] = [dict(name=p.name, dist=p.dist, version=p.version, status=p.status,
                               error=p.error, components=[f"{k}:{n}" for k, n in p.components])
                          for p in infos]
    if kind in (None, "configs"):
        out["configs"] = [f"{name}::{f.relative_to(d).as_posix()}"
                          for name, dirs in plugins.config_dirs().items()
                          for d in dirs for f in sorted(d.rglob("*.py"))
                          if "_base_" not in f.relative_to(d).parts]
    return out


def run(args) -> int:
    from coprs.plugins import plugins_disabled

    out = collect(args.kind, args.pattern)
    if args.json:
        print(json.dumps(out, indent=1))
        return 0
    for k, rows in out.items():
        if k == "plugins":
            print("plugins" + ("  (disabled: COPRS_DISABLE_PLUGINS is set)"
                               if plugins_disabled() else ""))
            for p in rows:
                detail = f": {p['error']}" if p["error"] else (
                    f": {', '.join(p['components'])}" if p["components"] else "")
                print(f"  {p['name']:<28}{p['dist']} {p['version']}  [{p['status']}]{detail}")
            if not rows and not plugins_disabled():
                print("  (none installed)")
        elif k == "configs":
            print("configs (from plugins; use as PLUGIN::path.py)")
            for c in rows:
                print(f"  {c}")
            if not rows:
                print("  (none)")
        else:
            print(k)
            width = max([len(r["name"]) for r in rows] + [26]) + 2
            for r in rows:
                print(f"  {r['name']:<{width}}{r['origin']}")
            if not rows:
                print("  (none)")
    return 0
