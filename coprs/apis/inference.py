"""The public Python API: build a segmentor from a config and segment images."""

from __future__ import annotations

import copy
import json
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from mmengine.config import Config

from ..image import load_image
from ..policies.adapters import is_token_row, lora_config
from ..structures import SegmentationResult
from ..utils import register_all_modules, state_dict_mismatch, torch_load_reason

__all__ = ["init_segmentor", "segment", "segment_batch", "load_checkpoint", "checkpoint_file",
           "export_dir", "apply_export", "check_export_heads", "EXPORT_MANIFEST", "config_file",
           "check_checkpoint_file", "CONFIG_SUFFIXES", "load_torch_file",
           "check_lora_provenance", "export_manifest", "export_of_policy"]

#: the file that marks a ``coprs export-hf`` folder (next to ``policy/`` and ``seg_head.pth``)
EXPORT_MANIFEST = "coprs_export.json"

#: the config files mmengine's ``Config.fromfile`` reads
CONFIG_SUFFIXES = (".py", ".json", ".yml", ".yaml")


def init_segmentor(config, checkpoint: str | None = None, device: str = "cpu",
                   cfg_options: dict | None = None, seed: int = 0):
    """Build a :class:`~coprs.models.ReasoningSegmentor` from a config and load a checkpoint.

    Args:
        config: a config file path, ``PLUGIN::path.py`` (a config a plugin ships) or an
            mmengine ``Config``.
        checkpoint: a coprs checkpoint (``.pth`` with a ``state_dict`` or a plain state dict),
            read with ``weights_only=True``; a training work dir (its newest checkpoint, as
            ``last_checkpoint`` names it); or a ``coprs export-hf`` folder (the policy is then
            loaded from its ``policy/`` folder, see :func:`apply_export`, and the prior and
            decoder from its ``seg_head.pth``). None keeps the weights the parts loaded
            themselves.
        device: torch device.
        cfg_options: dotted-key overrides, as ``--cfg-options`` on the command line.
        seed: seed for parts that start from random initialisation (the same config and seed
            give the same model; the global random state is left untouched).

    Returns:
        The segmentor in eval mode.

    Raises:
        FileNotFoundError: the config or the checkpoint does not exist.
        ValueError: the config is a folder or not a .py/.json/.yml/.yaml file; the checkpoint
            is not a file ``torch.save`` wrote (checked before the model is built), cannot be
            read with ``weights_only=True``, or does not match the model.
    """
    register_all_modules()
    if isinstance(config, str) and "::" in config:  # a config a plugin ships
        from ..plugins import resolve_config

        config = resolve_config(config)
    if isinstance(config, (str, os.PathLike)):
        config = Config.fromfile(str(config_file(config)))
    elif not isinstance(config, Config):
        raise TypeError(f"config must be a path or an mmengine Config, got {type(config).__name__}")
    if cfg_options:
        config.merge_from_dict(cfg_options)
    export = export_dir(checkpoint)
    if checkpoint is not None:  # a missing or unreadable file fails before the model is built
        check_checkpoint_file(export / "seg_head.pth" if export is not None
                              else checkpoint_file(checkpoint))
    if export is not None:
        config = copy.deepcopy(config)  # the caller's config keeps its own policy
        apply_export(config, export)
    from ..registry import MODELS

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = MODELS.build(config.model)
    if checkpoint is not None:
        load_checkpoint(model, checkpoint)
    return model.to(device).eval()


def config_file(config: str | os.PathLike) -> Path:
    """The config file ``config`` names; a ``ValueError`` naming it for a folder (with the config
    a training work dir holds, if it holds one) or a file that is not a config (a checkpoint
    given in its place, say), ``FileNotFoundError`` when it does not exist."""
    path = Path(config).expanduser()
    if path.is_dir():
        inside = sorted(str(c) for c in path.glob("*.py"))
        hint = f" (the config in it: {inside[0]})" if len(inside) == 1 else ""
        raise ValueError(f"config '{config}' is a folder; give a config file{hint}")
    if not path.is_file():
        raise FileNotFoundError(f"config '{config}' does not exist")
    if path.suffix.lower() not in CONFIG_SUFFIXES:
        hint = " (a checkpoint? give it as the checkpoint)" if path.suffix == ".pth" else ""
        raise ValueError(f"config '{config}' is not a config file{hint}; give a "
                         f"{', '.join(CONFIG_SUFFIXES)} file")
    return path


#: what a coprs checkpoint argument may be (the advice of :func:`check_checkpoint_file`)
CHECKPOINT_ADVICE = "give a .pth written by coprs train, a training work dir or a coprs export-hf folder"


def check_checkpoint_file(path: str | os.PathLike, what: str = "checkpoint",
                          advice: str = CHECKPOINT_ADVICE) -> None:
    """Raise a one-line ``ValueError`` naming ``path`` unless it looks like a file ``torch.save``
    writes (a whole zip archive, or a pickle in torch's legacy format). Reads the head and the
    tail of the file only, so it runs before a model is built; a config, a ``last_checkpoint``
    pointer or a JSON-lines file given as the checkpoint is named for what it is instead of
    torch's unpickler error.

    Args:
        path: the checkpoint file.
        what: how the caller named it, for the message (``"--checkpoint"``).
        advice: what to give instead, ending the message.
    """
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(4)
    if head.startswith(b"\x80"):  # torch's legacy format: a pickle
        return
    if head.startswith(b"PK\x03\x04"):
        if zipfile.is_zipfile(path):  # its end record is there: not cut short
            return
        raise ValueError(f"{what} '{path}' is a truncated or damaged zip archive (the format "
                         "torch.save writes); copy or save it again")
    if not head:
        raise ValueError(f"{what} '{path}' is empty (0 bytes); {advice}")
    if path.name == "last_checkpoint":
        raise ValueError(f"{what} '{path}' is a training work dir's pointer to its newest "
                         f"checkpoint, not a checkpoint; give the work dir '{path.parent}' or "
                         "the checkpoint file it names")
    if path.suffix.lower() in CONFIG_SUFFIXES:
        kind = "a JSON file" if path.suffix.lower() == ".json" else "a config file"
        raise ValueError(f"{what} '{path}' is {kind}, not a checkpoint; {advice}")
    raise ValueError(f"{what} '{path}' is not a checkpoint (torch.save writes a zip archive or "
                     f"a pickle, and this file is neither); {advice}")


#: how :func:`load_torch_file`'s message ends by default
READ_ADVICE = ("coprs reads checkpoints only so: give a .pth written by coprs train, or a file "
               "holding a state dict of tensors")


def load_torch_file(path: str | os.PathLike, what: str = "checkpoint", *, mmap: bool = False,
                    advice: str = READ_ADVICE) -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True)``: the one way coprs reads a
    checkpoint (SPEC §7: never ``weights_only=False``, so that a file cannot run code).

    Run :func:`check_checkpoint_file` first where a file that is no checkpoint at all (a config,
    a ``last_checkpoint`` pointer, a cut-short zip) should be named for what it is.

    Args:
        path: the file.
        what: how the caller names it, for the message (``"checkpoint"``, ``"seg head"``).
        mmap: map the tensors instead of reading them, so that a checkpoint of many GB costs
            little; a file in torch's legacy format, which cannot be mapped, is read.
        advice: what to give instead, ending the message.

    Returns:
        What the file holds.

    Raises:
        ValueError: one line, ``cannot read WHAT 'PATH' with torch.load(weights_only=True)
            (REASON); ADVICE``, whatever went wrong (torch's own message would suggest
            ``weights_only=False``); torch's exception is its ``__cause__``.
    """
    try:
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
        except RuntimeError as exc:
            if not mmap or "mmap can only be used" not in str(exc):
                raise
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - unpickling errors come in many types; name the file
        raise ValueError(f"cannot read {what} '{path}' with torch.load(weights_only=True) "
                         f"({torch_load_reason(exc)}); {advice}") from exc


def export_dir(checkpoint) -> Path | None:
    """The ``coprs export-hf`` folder ``checkpoint`` names, or None when it names something else.

    Raises:
        FileNotFoundError: the folder has ``coprs_export.json`` but lacks ``policy/`` or
            ``seg_head.pth``.
    """
    if checkpoint is None or not isinstance(checkpoint, (str, os.PathLike)):
        return None
    path = Path(checkpoint).expanduser()
    if not (path / EXPORT_MANIFEST).is_file():
        return None
    for part in ("policy/config.json", "seg_head.pth"):
        if not (path / part).is_file():
            raise FileNotFoundError(f"coprs export '{path}' lacks {part}; export it again with "
                                    "coprs export-hf CONFIG CHECKPOINT --out DIR")
    return path


def export_manifest(export: str | os.PathLike) -> dict:
    """The ``coprs_export.json`` of export folder ``export``; a ``ValueError`` naming the file
    when it cannot be read or is not JSON."""
    path = Path(export) / EXPORT_MANIFEST
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"'{path}' cannot be read as JSON ({exc})") from exc


def export_of_policy(policy_path: str | os.PathLike) -> Path | None:
    """The ``coprs export-hf`` folder whose ``policy/`` is ``policy_path``, or None (also for
    an incomplete export)."""
    try:
        return export_dir(Path(policy_path).expanduser().parent)
    except FileNotFoundError:  # a manifest, but no complete export beside it
        return None


def apply_export(config: Config, export: str | os.PathLike, clear_lora: bool = True) -> None:
    """Make ``config``'s policy load from the export's ``policy/`` folder, in place.

    The folder holds the merged weights (LoRA already folded in), so ``model.policy.tiny`` is
    cleared where the config sets it, and ``model.policy.lora`` too unless ``clear_lora`` is
    False (training new adapters on top of the export). An export made with another special
    token than the config's is a ``ValueError``: the prior reads that token's state.
    """
    export = Path(export)
    manifest = export_manifest(export)
    policy = config.model.policy
    token = policy.get("special_token", "<REF_POS>")
    if "special_token" in manifest and manifest["special_token"] != token:
        raise ValueError(
            f"coprs export '{export}' was made with special token {manifest['special_token']!r} "
            f"and config '{config.filename}' reads {token!r}; use the config the export came "
            f"from ({manifest.get('config', 'see its coprs_export.json')})")
    policy.model_path = str(export / "policy")
    for key in ("tiny", "lora") if clear_lora else ("tiny",):
        if key in policy:
            policy[key] = None


def check_export_heads(model: torch.nn.Module, export: str | os.PathLike) -> None:
    """Check that the export's ``seg_head.pth`` fits ``model``'s prior and decoder (every key,
    each shape) before a run loads it non-strictly (mmengine's ``load_from``), so that a head
    from another assembly is an error instead of a silently partial load."""
    path = Path(export) / "seg_head.pth"
    check_checkpoint_file(path, "seg head")
    head = load_torch_file(path, "seg head")
    own = {k: v for k, v in model.state_dict().items() if k.startswith(("prior.", "decoder."))}
    missing = [k for k in own if k not in head]
    unexpected = [k for k in head if k not in own]
    shapes = [f"{k} {tuple(head[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
              if k in head and head[k].shape != v.shape]
    if missing or unexpected or shapes:
        raise ValueError(f"'{path}' does not fit this config's prior and decoder: missing "
                         f"{missing[:5]} unexpected {unexpected[:5]} shapes {shapes[:3]}; use the "
                         "config the export came from (its config.py)")


def checkpoint_file(checkpoint: str | os.PathLike) -> Path:
    """The checkpoint file ``checkpoint`` names: the file itself, or for a training work dir the
    newest checkpoint its ``last_checkpoint`` file points to (the file of that name in the work
    dir when the work dir has moved since)."""
    path = Path(checkpoint).expanduser()
    if path.is_dir():
        pointer = path / "last_checkpoint"
        if not pointer.is_file():
            raise FileNotFoundError(f"'{path}' is a folder without a last_checkpoint file; give "
                                    "a checkpoint file or a training work dir")
        path = Path(pointer.read_text().strip())
        if not path.is_file() and (path.parent != Path(checkpoint).expanduser()) and (
                Path(checkpoint).expanduser() / path.name).is_file():
            # mmengine writes an absolute path: a work dir moved or copied since still names
            # its own checkpoints
            path = Path(checkpoint).expanduser() / path.name
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint '{path}' does not exist")
    return path


def check_lora_provenance(model: torch.nn.Module, meta: dict, path) -> None:
    """Check a LoRA checkpoint's adapters against the model they are loaded into, from what the
    run recorded (``meta['coprs_lora']``, :class:`~coprs.engine.hooks.PlainCheckpointStateHook`;
    older checkpoints have none and are not checked). Another ``alpha``, ``dropout``,
    ``target_modules`` or set of trained token rows (``trainable_tokens``) is a ``ValueError``
    (the adapters would load and act at another scale or on other layers); another base (``model.policy.model_path`` or ``tiny``) is a warning (a
    copy of the base elsewhere has another path), except when the run trained on a ``coprs
    export-hf`` folder (``load_from=EXPORT``) that is still there: another base than that export
    or a copy of it (the same ``coprs_export.json``) is then a ``ValueError``, since the
    original config names the base the export was made from."""
    import warnings

    recorded = meta.get("coprs_lora")
    policy = getattr(model, "policy", None)
    peft_cfg = lora_config(policy)
    if not isinstance(recorded, dict) or peft_cfg is None:
        return  # not a LoRA run, or a model without adapters (state_dict_mismatch says so)
    lora = recorded.get("lora") or {}
    now = dict(r=peft_cfg.r, alpha=peft_cfg.lora_alpha, dropout=peft_cfg.lora_dropout,
               target_modules=sorted(peft_cfg.target_modules or []),
               trainable_tokens=list(getattr(policy, "trainable_tokens", [])))
    # a run records the tokens as resolved (a list); a config may say True or False
    then = {k: sorted(v) if k == "target_modules" else v for k, v in lora.items()
            if k in now and not isinstance(v, bool)}
    changed = [f"{k}={then[k]!r} in the run, {now[k]!r} here" for k in then
               if then[k] != now[k]]
    if changed:
        raise ValueError(
            f"checkpoint '{path}' holds LoRA adapters trained with other model.policy.lora "
            f"settings ({'; '.join(changed)}); load it with the run's settings (coprs "
            f"print-config {path} shows them)")
    then_path, now_path = recorded.get("model_path"), getattr(policy, "model_path", None)
    if then_path is None or now_path is None:
        return
    if recorded.get("tiny") is not None:  # a tiny base's folder is named by its config's hash
        same = Path(then_path).name == Path(now_path).name
    else:
        same = Path(then_path).expanduser().resolve() == Path(now_path).expanduser().resolve()
    if not same:
        trained_on = export_of_policy(then_path)
        if trained_on is not None:  # adapters trained on an export (load_from=EXPORT)
            here = export_of_policy(now_path)
            try:  # a copy of that export: the same manifest
                if here is not None and export_manifest(here) == export_manifest(trained_on):
                    return
            except ValueError:  # one of them unreadable: not known to be the same
                pass
            raise ValueError(
                f"checkpoint '{path}' holds LoRA adapters trained on the coprs export "
                f"'{trained_on}' (the run's load_from), and this model's base is '{now_path}': "
                "on another base they make another model. Load it with --cfg-options "
                f"model.policy.model_path={then_path} model.policy.tiny=None, or with the "
                f"config the run saved (coprs print-config {path})")
        warnings.warn(f"checkpoint '{path}' holds LoRA adapters trained on the base "
                      f"'{then_path}', and this model's base is '{now_path}': the adapters only "
                      "fit their own base (a copy of it elsewhere is fine; another model is not)",
                      UserWarning, stacklevel=3)


def lora_cfg_options(meta: dict | None, special_token: str | None = "<REF_POS>") -> str | None:
    """The ``--cfg-options`` that give a model the LoRA adapters a checkpoint was trained with,
    from what the run recorded (``meta['coprs_lora']``), as one shell-ready string; None when
    nothing was recorded (not a LoRA run, or one from before the record). ``special_token``
    (the policy's) tells the default ``trainable_tokens`` from a chosen list."""
    recorded = (meta or {}).get("coprs_lora")
    if not isinstance(recorded, dict) or not isinstance(recorded.get("lora"), dict):
        return None
    lora = dict(recorded["lora"])
    tokens = lora.pop("trainable_tokens", None)
    parts = [f"model.policy.lora.{k}=[{','.join(map(str, v))}]" if isinstance(v, (list, tuple))
             else f"model.policy.lora.{k}={v}" for k, v in lora.items()]
    parts = parts or ["model.policy.lora.r=8"]  # the defaults: any key makes the dict
    default = [t for t in ("<think>", "</think>", special_token) if t]
    if tokens is not None and list(tokens) != default:
        parts.append("model.policy.lora.trainable_tokens=False" if not tokens else
                     f"\"model.policy.lora.trainable_tokens={list(tokens)!r}\"")
    return " ".join(parts)


def load_checkpoint(model: torch.nn.Module, checkpoint: str | os.PathLike) -> None:
    """Load a coprs checkpoint (a file or a training work dir, see :func:`checkpoint_file`) into
    ``model`` (``weights_only=True``; strict on trainable parts).

    Keys missing from the file are allowed only for frozen parameters (the frozen vision
    backbone, whose weights come from its own checkpoint). For a ``coprs export-hf`` folder the
    file is its ``seg_head.pth`` and the policy must have been built from its ``policy/``
    folder (:func:`init_segmentor` does that).
    """
    export = export_dir(checkpoint)
    loaded_elsewhere: tuple[str, ...] = ()
    if export is not None:
        built_from = getattr(getattr(model, "policy", None), "model_path", None)
        if built_from is None or Path(built_from).resolve() != (export / "policy").resolve():
            raise ValueError(
                f"'{export}' is a coprs export: its policy weights are in '{export / 'policy'}'. "
                "Build the model with init_segmentor(config, checkpoint=that folder), or point "
                "model.policy.model_path at its policy/ folder first")
        loaded_elsewhere = ("policy.",)
        path = export / "seg_head.pth"
    else:
        path = checkpoint_file(checkpoint)
    check_checkpoint_file(path)
    state = load_torch_file(path)
    meta = state.get("meta") if isinstance(state, dict) else None
    if isinstance(meta, dict):
        check_lora_provenance(model, meta, path)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"checkpoint '{path}' holds a {type(state).__name__}, not a state dict")
    bad = state_dict_mismatch(model, state, loaded_elsewhere)
    if any(bad.values()):
        what = " ".join(f"{k} {v[:5]}" + (f" (+{len(v) - 5} more)" if len(v) > 5 else "")
                        for k, v in bad.items() if v)
        hint = "was it trained with this config?"
        lora_in_file = any(".lora_" in k for k in bad["unexpected"])
        lora_in_model = any(".lora_" in k for k in bad["missing"])
        rows_in_file = any(map(is_token_row, bad["unexpected"]))
        rows_in_model = any(map(is_token_row, bad["missing"]))
        options = lora_cfg_options(meta if isinstance(meta, dict) else None,
                                   getattr(getattr(model, "policy", None), "special_token",
                                           "<REF_POS>"))
        if lora_in_file != lora_in_model:  # the usual cause: LoRA options left out or added
            hint = (f"the checkpoint was trained {'with' if lora_in_file else 'without'} LoRA "
                    f"adapters and the model {'has none' if lora_in_file else 'has them'}: use "
                    f"the run's model.policy.lora options (coprs print-config {path} shows them)")
            if lora_in_file and options:
                hint += f", i.e. --cfg-options {options}"
        elif rows_in_file != rows_in_model:  # LoRA both, the added tokens' rows in one only
            hint = (f"the checkpoint's LoRA run trained {'the' if rows_in_file else 'no'} added "
                    f"tokens' rows and the model {'trains none' if rows_in_file else 'does'}: "
                    "load it with --cfg-options model.policy.lora.trainable_tokens="
                    f"{'True' if rows_in_file else 'False'} (checkpoints written before coprs "
                    "trained those rows have none)")
        raise ValueError(f"checkpoint '{path}' does not match the model: {what}; {hint}")
    model.load_state_dict(state, strict=False)


def segment(model, image, instruction: str, allow_empty: bool = False,
            max_new_tokens: int | None = None, response: str | None = None
            ) -> SegmentationResult:
    """Reason about ``instruction`` on ``image`` and return CoT, heatmap and mask.

    Args:
        model: a segmentor from :func:`init_segmentor`.
        image: a path, a PIL image or an H x W x 3 uint8 array (grayscale, RGBA, palette and
            16-bit images are converted to RGB).
        instruction: the free-form instruction.
        allow_empty: accept an empty instruction (the empty-instruction ablation); otherwise an
            empty or whitespace-only instruction is a ``ValueError``.
        max_new_tokens: response budget, at least 1 (the policy's default when None; 0 or
            less is a ``ValueError``).
        response: a response to teacher-force instead of generating one, e.g. an edited chain
            of thought (``"<think>…</think><REF_POS>"``): the heatmap and the mask then show
            where that reasoning points.

    Returns:
        A :class:`~coprs.structures.SegmentationResult`; a response without the special token
        gives ``format_ok=False``, never an exception.
    """
    _check_budget(max_new_tokens)
    _check_text(instruction, response, allow_empty)
    arr = load_image(image)
    return model.predict_images([arr], [instruction],
                                None if response is None else [response],
                                max_new_tokens=max_new_tokens)[0]


def _check_budget(max_new_tokens) -> None:
    """``max_new_tokens`` is None (the policy's default) or an int of at least 1."""
    if max_new_tokens is None:
        return
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, (int, np.integer)):
        raise TypeError(f"max_new_tokens must be an int or None (the policy's default), got "
                        f"{type(max_new_tokens).__name__}")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens is {max_new_tokens}; give at least 1, or None for the "
                         "policy's default")


def _check_text(instruction, response, allow_empty: bool) -> None:
    if not isinstance(instruction, str):
        raise TypeError(f"instruction must be a string, got {type(instruction).__name__}")
    if not instruction.strip() and not allow_empty:
        raise ValueError("instruction is empty; say what to segment (or pass allow_empty=True, "
                         "--allow-empty on the command line)")
    if response is not None and not isinstance(response, str):
        raise TypeError(f"response must be a string, got {type(response).__name__}")


def segment_batch(model, images: list, instructions: list[str],
                  responses: list[str | None] | None = None, allow_empty: bool = False,
                  max_new_tokens: int | None = None) -> list[SegmentationResult | Exception]:
    """:func:`segment` for several (image, instruction) pairs in one batched pass.

    Generation, readout and decoding run once for the samples that generate and once for those
    with a given response (``responses[i]`` not None). Each sample gets what :func:`segment`
    gives it alone up to floating-point rounding (padding changes the order of sums: heatmaps
    agree to about 1e-6, and a near-tie in greedy decoding could pick another token). A sample whose input is bad (an unreadable image, an
    empty instruction) gets the exception in its place and the others are still segmented; if a
    batched pass itself fails, its samples are retried one by one, so one bad sample never costs
    the rest.

    ``max_new_tokens`` is checked as in :func:`segment`, for the whole call: a bad one raises.

    Returns:
        One :class:`~coprs.structures.SegmentationResult` or exception per input, in order.
    """
    _check_budget(max_new_tokens)
    n = len(images)
    if len(instructions) != n or (responses is not None and len(responses) != n):
        raise ValueError(f"segment_batch: {n} images, {len(instructions)} instructions and "
                         f"{'no' if responses is None else len(responses)} responses; give one "
                         "of each per sample")
    responses = [None] * n if responses is None else list(responses)
    out: list = [None] * n
    arrays: dict[int, np.ndarray] = {}
    for i in range(n):
        try:
            _check_text(instructions[i], responses[i], allow_empty)
            arrays[i] = load_image(images[i])
        except (ValueError, TypeError, FileNotFoundError) as exc:
            out[i] = exc
    for given in (False, True):
        idx = [i for i in arrays if (responses[i] is not None) == given]
        if not idx:
            continue
        try:
            results = model.predict_images([arrays[i] for i in idx],
                                           [instructions[i] for i in idx],
                                           [responses[i] for i in idx] if given else None,
                                           max_new_tokens=max_new_tokens)
        except Exception:  # noqa: BLE001 - find the sample that fails, keep the others
            results = []
            for i in idx:
                try:
                    results.append(model.predict_images(
                        [arrays[i]], [instructions[i]], [responses[i]] if given else None,
                        max_new_tokens=max_new_tokens)[0])
                except Exception as exc:  # noqa: BLE001 - reported in its place
                    results.append(exc)
        for i, result in zip(idx, results):
            out[i] = result
    return out
