"""A LoRA checkpoint records what its adapters were trained with, and loading it checks that:
another scale or other target layers are an error, another base a warning."""

import warnings

import pytest
import torch
from mmengine.config import Config

from coprs.apis import init_segmentor
from coprs.cli import main

from ..conftest import TINY_CONFIG  # noqa: TID252


def test_lora_adapters_load_only_with_their_own_settings_and_base(tmp_path):
    cfg = Config.fromfile(str(TINY_CONFIG))
    cfg.model.policy.lora = dict(r=4, alpha=8, target_modules=["q_proj", "v_proj"])
    cfg.model.pop("feature_cache")
    cfg.dump(str(tmp_path / "lora.py"))
    assert main(["train", str(tmp_path / "lora.py"), "--work-dir", str(tmp_path / "w"),
                 "--cfg-options", "train_cfg.stages.0.iters=1", "train_cfg.stages.1.iters=1",
                 "train_cfg.stages.1.batch_size=1", "train_dataloader.batch_size=2",
                 "train_cfg.group_size=2", "train_cfg.rollout_engine.max_new_tokens=4"]) == 0
    ckpt = tmp_path / "w" / "iter_2.pth"
    meta = torch.load(ckpt, weights_only=True)["meta"]["coprs_lora"]
    assert meta["lora"]["alpha"] == 8 and meta["tiny"] is not None
    # the trained token rows as resolved, whatever the config said
    assert meta["lora"]["trainable_tokens"] == ["<think>", "</think>", "<REF_POS>"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # its own settings and base: no warning
        init_segmentor(str(tmp_path / "lora.py"), checkpoint=ckpt)
    with pytest.raises(ValueError, match=r"other model.policy.lora settings \(alpha=8 in the "
                                         r"run, 32 here\)"):
        init_segmentor(str(tmp_path / "lora.py"), checkpoint=ckpt,
                       cfg_options={"model.policy.lora.alpha": 32})
    with pytest.raises(ValueError, match=r"target_modules=\['q_proj', 'v_proj'\] in the run"):
        init_segmentor(str(tmp_path / "lora.py"), checkpoint=ckpt,
                       cfg_options={"model.policy.lora.target_modules": ["q_proj", "k_proj"],
                                    "model.policy.lora.r": 4})
    with pytest.raises(ValueError, match=r"trainable_tokens=\['<think>', '</think>', '<REF_POS>'\] "
                                         r"in the run, \['<REF_POS>'\] here"):
        init_segmentor(str(tmp_path / "lora.py"), checkpoint=ckpt,
                       cfg_options={"model.policy.lora.trainable_tokens": ["<REF_POS>"]})
    tiny = dict(cfg.model.policy.tiny, seed=1)  # another tiny base
    with pytest.warns(UserWarning, match="trained on the base .* only fit their own base"):
        init_segmentor(str(tmp_path / "lora.py"), checkpoint=ckpt,
                       cfg_options={"model.policy.tiny": tiny})
