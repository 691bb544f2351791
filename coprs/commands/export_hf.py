"""``coprs export-hf``: a trained policy as a plain transformers folder + a seg-head file."""

from __future__ import annotations

import json
import os
from pathlib import Path

from .common import UsageError, add_cfg_options, load_config, resolve_checkpoint

__all__ = ["add_parser", "run"]


def add_parser(sub) -> None:
    p = sub.add_parser(
        "export-hf",
        help="export the policy (LoRA merged) as a transformers folder and the seg head",
        description="Load a config and checkpoint, merge LoRA adapters into the policy, and write "
                    "OUT/policy/ (save_pretrained: config, weights, tokenizer, processor; loads "
                    "with Qwen2_5_VLForConditionalGeneration.from_pretrained) and "
                    "OUT/seg_head.pth (prior + decoder state dict), OUT/config.py (the merged "
                    "config) and OUT/coprs_export.json. The policy is saved in the dtype of its "
                    "trained weights. The export is written beside OUT and moved into place "
                    "when complete. OUT then serves as a checkpoint: "
                    "coprs infer --config OUT/config.py --checkpoint OUT ….",
        epilog="example: coprs export-hf configs/coprs/coprs_tiny_shapes_cpu.py "
               "work_dirs/coprs_tiny_shapes_cpu --out exported/",
    )
    p.add_argument("config", help="config file")
    p.add_argument("checkpoint", help="checkpoint (.pth) or a training work dir (its newest "
                                       "checkpoint)")
    p.add_argument("--out", required=True,
                   help="output folder: a new or empty one, or an earlier export (replaced as a "
                        "whole once the new export is complete)")
    add_cfg_options(p)
    p.set_defaults(func=run)


def model_card(config: str, checkpoint: str, policy, head_tensors: int,
               source: dict | None = None) -> str:
    """``OUT/README.md``: what the folder holds and how to run it (``source``: the export the
    weights started from, :func:`source_export`)."""
    from coprs.utils import source_version

    lora = "LoRA adapters merged into the weights" if policy.uses_adapters else "full weights"
    if getattr(policy, "trainable_tokens", None):
        rows = ", ".join(f"`{t}`" for t in policy.trainable_tokens)
        lora += f", with the trained rows of {rows} in the input embeddings and LM head"
    since = "" if source is None else (
        f" The weights started from the earlier export `{source['folder']}` (of the checkpoint "
        f"`{source['manifest'].get('checkpoint', '?')}`; `coprs_export.json` keeps its manifest "
        "under `exported_from`).")
    return f"""# coprs export of `{Path(config).name}`

Exported by `coprs export-hf` (coprs {source_version()}) from the checkpoint `{checkpoint}`.{since}

| path | content |
|---|---|
| `policy/` | the policy, a transformers Qwen2.5-VL folder ({lora}); its tokenizer has `<think>`, `</think>` and `{policy.special_token}` |
| `seg_head.pth` | the prior and the decoder ({head_tensors} tensors, a plain state dict) |
| `config.py` | the config the model was trained with, its `_base_` files merged |
| `coprs_export.json` | where it came from |

The frozen vision backbone is not in the folder. The weight files `config.py` names outside it
(`model.vision_backbone.checkpoint`, and for a SAM decoder `model.decoder.sam_checkpoint`, whose
trained weights `seg_head.pth` holds) must exist where the model runs; point them elsewhere with
`--cfg-options`.

## Use

```bash
coprs infer --checkpoint THIS_FOLDER IMAGE "instruction"          # config.py is read from here
coprs test THIS_FOLDER/config.py THIS_FOLDER                      # the config's test splits
coprs train CONFIG --cfg-options load_from=THIS_FOLDER            # fine-tune from these weights
```

```python
from coprs.apis import init_segmentor, segment
model = init_segmentor("THIS_FOLDER/config.py", checkpoint="THIS_FOLDER")
result = segment(model, "image.jpg", "instruction")  # .response, .cot, .heatmap, .mask
```

The policy alone needs no coprs: `policy/` is a plain transformers folder, which
`Qwen2_5_VLForConditionalGeneration` loads from this disk like any saved model.
"""


#: what ``coprs export-hf`` writes into OUT; a folder holding the manifest and nothing else
#: than these is an earlier export, which a new export replaces as a whole
EXPORT_ENTRIES = ("policy", "seg_head.pth", "config.py", "README.md", "coprs_export.json")


def check_out(out: Path) -> None:
    """Refuse an ``--out`` that an export would damage, before any model is built: a file, a
    link, or a folder that is neither empty nor an earlier export (a training work dir, say,
    whose checkpoints replacing it would delete)."""
    from coprs.apis import EXPORT_MANIFEST

    advice = "give a new or empty folder, or an earlier coprs export to replace"
    if out.is_symlink():
        raise UsageError(f"--out '{out}' is a link; give the folder it points to or {advice}")
    above = next((p for p in out.parents if p.exists()), None)
    if above is not None and not above.is_dir():
        raise UsageError(f"--out '{out}': '{above}' is a file, not a folder; {advice}")
    if above is not None and not os.access(out.parent if out.parent.exists() else above,
                                           os.W_OK | os.X_OK):
        raise UsageError(f"--out '{out}': cannot write in '{out.parent}'; give a folder where "
                         "you can write")
    if not out.exists():
        return
    if not out.is_dir():
        raise UsageError(f"--out '{out}' is a file; {advice}")
    entries = sorted(p.name for p in out.iterdir())
    if not entries:
        return
    if not (out / EXPORT_MANIFEST).is_file():
        raise UsageError(f"--out '{out}' is a folder that is not empty and not a coprs export "
                         f"(it holds {', '.join(entries[:4])}{', …' if len(entries) > 4 else ''})"
                         f"; {advice}")
    others = [e for e in entries if e not in EXPORT_ENTRIES]
    if others:
        raise UsageError(f"--out '{out}' is a coprs export that also holds {', '.join(others[:4])}"
                         f"{', …' if len(others) > 4 else ''}, which replacing it would delete; "
                         f"move them out or {advice}")


def check_exportable(model, config: str) -> None:
    """An export holds the policy (``policy/``) and the prior and decoder (``seg_head.pth``);
    a model that trains other tensors (an unfrozen vision backbone) cannot be exported."""
    stray = [n for n, p in model.named_parameters()
             if p.requires_grad and not n.startswith(("policy.", "prior.", "decoder."))]
    if stray:
        parts = sorted({n.split(".")[0] for n in stray})
        raise UsageError(
            f"config '{config}' trains {len(stray)} tensors outside the policy, prior and "
            f"decoder ({', '.join(stray[:2])}{', …' if len(stray) > 2 else ''} in "
            f"{', '.join(parts)}), which an export does not hold, so it would not load; use the "
            "checkpoint itself (coprs infer/test take it as it is), or train "
            f"with those parts frozen (e.g. model.{parts[0]}.frozen=True)")


def policy_dtype(state: dict):
    """The dtype most of ``state``'s floating-point weights (by element count) are in."""
    counts: dict = {}
    for v in state.values():
        if v.is_floating_point():
            counts[v.dtype] = counts.get(v.dtype, 0) + v.numel()
    return max(counts, key=counts.get)


def replace_folder(new: Path, out: Path) -> None:
    """Move the finished export ``new`` to ``out``; an earlier export there is moved aside first
    and deleted only once ``new`` is in place (put back if the move fails)."""
    import shutil
    import tempfile

    aside = None
    if out.exists():
        aside = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        out.rename(aside / out.name)
    try:
        new.rename(out)
    except OSError:
        if aside is not None:
            (aside / out.name).rename(out)
            aside.rmdir()
        raise
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)


def stop_where_coprs_stops(base, policy) -> None:
    """Make ``base.generation_config.eos_token_id`` the list of its end tokens and the others
    coprs's generation stops at (``policy.stop_token_ids``: ``<|im_end|>``, and the special
    token with ``stop_at_special_token``), so that plain ``generate`` on the exported folder ends
    a response where coprs does. The special token is listed only when the policy stops at it
    (an earlier export's ``generation_config.json`` may list it)."""
    eos = base.generation_config.eos_token_id
    eos = [] if eos is None else list(eos) if isinstance(eos, (list, tuple)) else [eos]
    eos = [i for i in eos if i != policy.special_token_id]
    base.generation_config.eos_token_id = eos + [i for i in policy.stop_token_ids if i not in eos]


def source_export(policy, checkpoint: str) -> dict | None:
    """The earlier ``coprs export-hf`` folder the weights started from, as
    ``{"folder": …, "manifest": its coprs_export.json}``, or None. The checkpoint may be that
    export itself (the policy is then built from its ``policy/``), or a checkpoint of a run
    started from it with ``load_from=FOLDER`` (whose recorded config, ``meta['cfg']``, names
    that ``policy/`` as ``model.policy.model_path``; the config given here need not)."""
    from coprs.apis import EXPORT_MANIFEST, export_dir
    from coprs.apis.inference import export_manifest, export_of_policy

    from .print_config import config_of_checkpoint

    paths = [policy.model_path]
    if export_dir(checkpoint) is None:
        try:
            paths.append(config_of_checkpoint(checkpoint).model.policy.get("model_path"))
        except (UsageError, AttributeError):  # no recorded config, or one without a policy
            pass
    for folder in filter(None, map(export_of_policy, filter(None, paths))):
        try:
            manifest = export_manifest(folder)
        except ValueError as exc:
            raise UsageError(f"the weights started from the coprs export '{folder}', whose "
                             f"{EXPORT_MANIFEST} cannot be read ({exc}); restore that file "
                             "(the new export records it) or export that folder again"
                             ) from exc
        return {"folder": str(folder), "manifest": manifest}
    return None


def write_export(tmp: Path, args, cfg, model, source: dict | None = None) -> int:
    """Write the export into the empty folder ``tmp``; the number of seg-head tensors.
    ``source``: the earlier export the weights started from (:func:`source_export`)."""
    import torch

    policy = model.policy
    merged = policy.merged_state_dict()
    # the dtype of the trained (merged) weights, not the base folder's config dtype (bf16 for a
    # real Qwen2.5-VL), which would round a float32 fine-tune on save
    base = type(policy.model).from_pretrained(policy.model_path, dtype=policy_dtype(merged))
    if len(policy.tokenizer) > base.get_input_embeddings().weight.shape[0]:
        base.resize_token_embeddings(len(policy.tokenizer))
    missing, unexpected = base.load_state_dict(merged, strict=False)
    if unexpected or [k for k in missing if "lm_head" not in k]:
        raise ValueError(f"merged policy does not match {policy.model_path}: missing "
                         f"{missing[:5]} unexpected {unexpected[:5]}")
    stop_where_coprs_stops(base, policy)
    base.save_pretrained(tmp / "policy")
    policy.processor.save_pretrained(tmp / "policy")
    head = {k: v for k, v in model.state_dict().items() if k.startswith(("prior.", "decoder."))}
    torch.save(head, tmp / "seg_head.pth")
    cfg.dump(str(tmp / "config.py"))  # flat: loads without the _base_ files
    (tmp / "README.md").write_text(model_card(args.config, args.checkpoint, policy, len(head),
                                              source), encoding="utf-8")
    manifest = {"config": str(args.config), "checkpoint": str(args.checkpoint),
                "special_token": policy.special_token, "lora_merged": bool(policy.uses_adapters),
                "seg_head_keys": len(head)}
    if source is not None:
        manifest["exported_from"] = source
    (tmp / "coprs_export.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return len(head)


def run(args) -> int:
    import shutil
    import tempfile

    from coprs.apis import init_segmentor
    from coprs.utils import usual_mode

    out = Path(os.path.abspath(Path(args.out).expanduser()))
    check_out(out)
    args.checkpoint = resolve_checkpoint(args.checkpoint)
    cfg = load_config(args.config, args.cfg_options)
    model = init_segmentor(cfg, args.checkpoint)
    check_exportable(model, args.config)
    source = source_export(model.policy, args.checkpoint)
    out.parent.mkdir(parents=True, exist_ok=True)
    # written beside OUT and moved into place when complete: an export that fails or is
    # interrupted leaves an earlier export at OUT as it was
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.export-", dir=out.parent))
    tmp.chmod(usual_mode(0o777))  # mkdtemp's folder is private (0700); OUT gets the usual one
    try:
        heads = write_export(tmp, args, cfg, model, source)
        check_out(out)  # still nothing else there
        replace_folder(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    print(f"wrote {out}/policy (transformers), {out}/seg_head.pth ({heads} tensors), "
          f"{out}/config.py and {out}/README.md")
    return 0
