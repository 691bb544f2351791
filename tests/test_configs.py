from pathlib import Path

import pytest
from mmengine.config import Config

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
ALL = sorted(p for p in CONFIG_DIR.rglob("*.py"))


@pytest.mark.parametrize("path", ALL, ids=lambda p: str(p.relative_to(CONFIG_DIR)))
def test_every_config_loads(path):
    cfg = Config.fromfile(str(path))
    if "_base_" not in path.parts:
        assert cfg.default_scope == "coprs"
        assert cfg.model.type == "ReasoningSegmentor"


def test_real_size_configs_point_at_local_weights():
    for path in CONFIG_DIR.glob("coprs/coprs_qwen2.5-vl-*.py"):
        cfg = Config.fromfile(str(path))
        assert not Path(cfg.model.policy.model_path).is_absolute()
        assert cfg.model.vision_backbone.checkpoint.endswith(".pth")
        assert cfg.model.policy.arch["text_config"]["hidden_size"] in (2048, 3584)
