"""``coprs export-hf``: a trained policy as a plain transformers folder + a seg-head file."""

from __future__ import annotations

import json
from pathlib import Path

from .common import add_cfg_options, load_config, resolve_checkpoint

__all__ = ["add_parser", "run"]


def add_parser(sub) -> None:
    p = sub.add_parser(
        "export-hf",
        help="export the policy (LoRA merged) as a transformers folder and the seg head",
        description="Load a config and checkpoint, merge LoRA adapters into the policy, and write "
                    "OUT/policy/ (save_pretrained: config, weights, tokenizer, processor; loads "
                    "with Qwen2_5_VLForConditionalGeneration.from_pretrained) and "
                    "OUT/seg_head.pth (prior + decoder state dict), OUT/config.py (the merged "
                    "config) and OUT/coprs_export.json. OUT then serves as a checkpoint: "
                    "coprs infer --config OUT/config.py --checkpoint OUT ….",
        epilog="example: coprs export-hf configs/coprs/coprs_tiny_shapes_cpu.py "
               "work_dirs/coprs_tiny_shapes_cpu/iter_940.pth --out exported/",
    )
    p.add_argument("config", help="config file")
    p.add_argument("checkpoint", help="checkpoint (.pth) or a training work dir")
    p.add_argument("--out", required=True, help="output folder")
    add_cfg_options(p)
    p.set_defaults(func=run)


def run(args) -> int:
    import torch

    from coprs.apis import init_segmentor

    args.checkpoint = resolve_checkpoint(args.checkpoint)
    cfg = load_config(args.config, args.cfg_options)
    model = init_segmentor(cfg, args.checkpoint)
    policy = model.policy
    out = Path(args.out)
    (out / "policy").mkdir(parents=True, exist_ok=True)
    merged = policy.merged_state_dict()
    base = type(policy.model).from_pretrained(policy.model_path)
    if len(policy.tokenizer) > base.get_input_embeddings().weight.shape[0]:
        base.resize_token_embeddings(len(policy.tokenizer))
    missing, unexpected = base.load_state_dict(merged, strict=False)
    if unexpected or [k for k in missing if "lm_head" not in k]:
        raise ValueError(f"merged policy does not match {policy.model_path}: missing "
                         f"{missing[:5]} unexpected {unexpected[:5]}")
    base.save_pretrained(out / "policy")
    policy.processor.save_pretrained(out / "policy")
    head = {k: v for k, v in model.state_dict().items() if k.startswith(("prior.", "decoder."))}
    torch.save(head, out / "seg_head.pth")
    cfg.dump(str(out / "config.py"))  # flat: loads without the _base_ files
    (out / "coprs_export.json").write_text(json.dumps({
        "config": str(args.config), "checkpoint": str(args.checkpoint),
        "special_token": policy.special_token, "lora_merged": bool(policy.uses_adapters),
        "seg_head_keys": len(head)}, indent=2) + "\n")
    print(f"wrote {out}/policy (transformers), {out}/seg_head.pth ({len(head)} tensors) and "
          f"{out}/config.py")
    return 0
