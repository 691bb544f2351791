"""Small shared helpers: scope setup, meta-device building, the local cache directory."""

from __future__ import annotations

import contextlib
import contextvars
import functools
import os
import subprocess
from pathlib import Path

__all__ = ["atomic_write", "register_all_modules", "meta_build", "is_meta_build", "coprs_home", "using_coprs_home", "first_few",
           "repeat_each", "fork_rng", "state_dict_mismatch", "torch_load_reason", "on_any_rank"]

_META_BUILD = contextvars.ContextVar("coprs_meta_build", default=False)


def register_all_modules(init_default_scope: bool = True) -> None:
    """Import every coprs module that registers components, load the plugins (entry-point group
    ``coprs``) and set the default scope to coprs.

    mmengine child registries resolve names through the default scope; API users who build
    components outside a Runner call this first (``init_segmentor`` does it for them).
    """
    import coprs.backbones  # noqa: F401
    import coprs.datasets  # noqa: F401
    import coprs.decoders  # noqa: F401
    import coprs.engine  # noqa: F401
    import coprs.evaluation  # noqa: F401
    import coprs.models  # noqa: F401
    import coprs.policies  # noqa: F401
    import coprs.priors  # noqa: F401
    import coprs.rollout  # noqa: F401
    from coprs.plugins import load_plugins

    load_plugins()  # after the built-ins, as on the first registry lookup
    if init_default_scope:
        from mmengine.registry import DefaultScope

        current = DefaultScope.get_current_instance()
        if current is None or current.scope_name != "coprs":
            DefaultScope.get_instance(f"coprs-{id(object())}", scope_name="coprs")


@contextlib.contextmanager
def meta_build():
    """Inside this context, components with large weights build on the meta device from their
    architecture config and read no weight files (used by ``tools/count_params.py``)."""
    token = _META_BUILD.set(True)
    try:
        yield
    finally:
        _META_BUILD.reset(token)


def is_meta_build() -> bool:
    """True inside :func:`meta_build`."""
    return _META_BUILD.get()


def coprs_home() -> Path:
    """Where coprs keeps locally built artefacts (tiny models): ``$COPRS_HOME`` or
    ``~/.cache/coprs``."""
    return Path(os.environ.get("COPRS_HOME", Path.home() / ".cache" / "coprs"))


@contextlib.contextmanager
def using_coprs_home(path: str | os.PathLike):
    """Set ``$COPRS_HOME`` to ``path`` inside the block and restore it (or its absence) after;
    test suites use it so tiny models are never built into a user's cache."""
    old = os.environ.get("COPRS_HOME")
    os.environ["COPRS_HOME"] = str(path)
    try:
        yield Path(path)
    finally:
        if old is None:
            os.environ.pop("COPRS_HOME", None)
        else:
            os.environ["COPRS_HOME"] = old


@functools.cache
def source_version(root: str | os.PathLike | None = None) -> str:
    """``coprs.__version__``, plus ``+g`` and the commit (7 hex digits) when coprs runs from a
    git checkout (``root``: the folder above the package), as OpenMMLab records
    ``mmseg_version``: what built a checkpoint or an evaluation's records, which the version of
    an editable install does not tell apart. Uncommitted edits are not seen. The running
    package's (no ``root``) is read once per process: the code it runs was imported then."""
    if root is None:
        return _package_source_version()
    return _source_version_at(Path(root))


@functools.lru_cache(maxsize=1)
def _package_source_version() -> str:
    return _source_version_at(Path(__file__).resolve().parent.parent)


def _source_version_at(root: Path) -> str:
    from . import __version__

    if not (root / ".git").exists():  # an installed package, or a source tree without git
        return __version__
    try:
        done = subprocess.run(["git", "-C", str(root), "rev-parse", "--short=7", "HEAD"],
                              capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):  # no git on the machine
        return __version__
    commit = done.stdout.strip()
    return f"{__version__}+g{commit}" if done.returncode == 0 and commit else __version__


def first_few(items: list[str], limit: int, sep: str = ", ") -> str:
    """The first ``limit`` of ``items`` joined by ``sep``, and ``" (+K more)"`` for the rest (the
    lists of skipped samples in warnings)."""
    more = f" (+{len(items) - limit} more)" if len(items) > limit else ""
    return sep.join(items[:limit]) + more


def repeat_each(items: list, n: int) -> list:
    """``[a, b] → [a, a, b, b]`` for n = 2: per-sample inputs laid out group-major for G rollouts."""
    return [x for x in items for _ in range(n)]


def fork_rng():
    """A block after which torch's global random state (CPU and the current CUDA device) is as
    it was before it: rollouts drawn from their own seed, validation during training."""
    import torch

    cuda = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    return torch.random.fork_rng(devices=cuda)


def state_dict_mismatch(model, state: dict, loaded_elsewhere: tuple[str, ...] = ()
                        ) -> dict[str, list[str]]:
    """How a checkpoint's ``state`` fails to fit ``model``, before anything is loaded.

    Returns ``missing`` (trainable parameters of ``model`` the state lacks; frozen parameters,
    tied aliases of them and buffers may be absent: the frozen vision backbone, and under LoRA
    the base policy, load from their own weights), ``unexpected`` (keys ``model`` does not
    have) and ``shapes`` (``"key (state shape) vs (model shape)"``). Keys starting with a
    prefix in ``loaded_elsewhere`` (e.g. ``"policy."`` when the policy comes from an export
    folder) are neither missing nor unexpected. All three lists empty: the state fits.
    """
    own = model.state_dict()
    optional = {n for n, p in model.named_parameters(remove_duplicate=False) if not p.requires_grad}
    optional |= {n for n, _ in model.named_buffers(remove_duplicate=False)}
    skip = tuple(loaded_elsewhere)
    return {
        "missing": [k for k in own
                    if k not in state and k not in optional and not k.startswith(skip)],
        "unexpected": [k for k in state if k not in own and not k.startswith(skip)],
        "shapes": [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
                   if k in state and hasattr(state[k], "shape")
                   and tuple(state[k].shape) != tuple(v.shape)],
    }


def torch_load_reason(exc: Exception) -> str:
    """One line on why ``torch.load(weights_only=True)`` failed: the unpickler's own reason
    (torch's message around it suggests ``weights_only=False``, which coprs never uses)."""
    text = str(exc)
    marker = "WeightsUnpickler error:"
    if marker in text:
        return text.split(marker, 1)[1].strip().split(". ", 1)[0].splitlines()[0].rstrip(".")
    first = (text.strip().splitlines() or [""])[0]
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def on_any_rank(flag: bool) -> bool:
    """``flag`` on this rank or on any other: all-reduced in distributed runs, so that every rank
    takes the same branch (skip a step, say) and none waits in a collective the others left."""
    from mmengine.dist import all_reduce, get_world_size

    if get_world_size() == 1:
        return bool(flag)
    import torch
    from mmengine.dist.utils import get_comm_device

    t = torch.tensor(float(flag), device=get_comm_device())
    all_reduce(t, op="sum")
    return t.item() > 0


def usual_mode(base: int) -> int:
    """``base`` less the process's umask: the mode ``open`` (0o666) or ``mkdir`` (0o777) would
    give, for files and folders that ``tempfile`` creates private (0600/0700)."""
    umask = os.umask(0)
    os.umask(umask)
    return base & ~umask


def atomic_write(path: str | os.PathLike, data: bytes | str) -> None:
    """Write ``data`` (str as UTF-8) to ``path`` through a temporary file in the same folder
    and ``os.replace``: a crash at any moment leaves the old file or the new one, never a
    truncated one. The parent folder is created; the file gets the mode of the file it replaces,
    or of a newly created one (0666 less the umask), not ``mkstemp``'s 0600."""
    import tempfile

    path = Path(path)
    if isinstance(data, str):
        data = data.encode("utf-8")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp makes the file private (0600); give it the mode a plain open() would (0666
        # less the umask) or the mode of the file it replaces, so results in a shared work dir
        # stay readable by the others
        try:
            mode = path.stat().st_mode & 0o7777
        except OSError:
            mode = usual_mode(0o666)
        os.chmod(tmp, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
