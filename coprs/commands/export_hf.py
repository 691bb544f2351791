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
               "work_dirs/coprs_tiny_shapes_cpu --out exported/",
    )
    p.add_argument("config", help="config file")
    p.add_argument("checkpoint", help="checkpoint (.pth) or a training work dir (its newest "
                                       "checkpoint)")
    p.add_argument("--out", required=True, help="output folder")
    add_cfg_options(p)
    p.set_defaults(func=run)


def model_card(config: str, checkpoint: str, policy, head_tensors: int) -> str:
    """``OUT/README.md``: what the folder holds and how to run it."""
    from coprs import __version__

    lora = "LoRA adapters merged into the weights" if policy.uses_adapters else "full weights"
    return f"""# coprs export of `{Path(config).name}`

Exported by `coprs export-hf` (coprs {__version__}) from the checkpoint `{checkpoint}`.

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
    (out / "README.md").write_text(model_card(args.config, args.checkpoint, policy, len(head)),
                                   encoding="utf-8")
    (out / "coprs_export.json").write_text(json.dumps({
        "config": str(args.config), "checkpoint": str(args.checkpoint),
        "special_token": policy.special_token, "lora_merged": bool(policy.uses_adapters),
        "seg_head_keys": len(head)}, indent=2) + "\n")
    print(f"wrote {out}/policy (transformers), {out}/seg_head.pth ({len(head)} tensors), "
          f"{out}/config.py and {out}/README.md")
    return 0
