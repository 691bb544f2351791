"""Shared fixtures: tiny real-architecture models built once per session in a temp COPRS_HOME."""

from __future__ import annotations

from pathlib import Path

import pytest

from coprs.utils import using_coprs_home

REPO = Path(__file__).resolve().parents[1]
TINY_CONFIG = REPO / "configs" / "coprs" / "coprs_tiny_shapes_cpu.py"
#: --cfg-options that shrink a TINY_CONFIG training run to seconds: small batches and groups,
#: short rollouts, a log line and a checkpoint every iteration, 2 validation samples
SMALL_RUN = [
    "val_cfg.datasets.0.num_samples=2",
    "train_dataloader.batch_size=2",
    "train_cfg.group_size=2",
    "train_cfg.rollout_engine.max_new_tokens=6",
    "default_hooks.logger.interval=1",
    "default_hooks.checkpoint.interval=1",
    "default_hooks.checkpoint.max_keep_ckpts=10",
]


def kl_ref(log: str, step: int, total: int) -> float:
    """The KL to the reference logged at iteration ``step`` of ``total`` (4 decimals) in a
    training log."""
    import re

    line = next(x for x in log.splitlines() if f"Iter(train) [{step}/{total}]" in x)
    return float(re.search(r"kl_ref: (\S+)", line).group(1))


@pytest.fixture(scope="session")
def small_run(tmp_path_factory):
    """:data:`SMALL_RUN`, with the frozen-feature cache in the session's temp folder."""
    return [*SMALL_RUN, f"model.feature_cache.root={tmp_path_factory.mktemp('feature_cache')}"]


@pytest.fixture(scope="session", autouse=True)
def _relative_feature_caches_in_tmp(tmp_path_factory):
    """A relative feature-cache root (the tiny configs' ``work_dirs/feature_cache``) resolves under
    the session's temp folder, so tests never write into the repository's ``work_dirs`` (a user's
    main-job cache stays as it was). Subprocess runs pass an absolute root themselves."""
    from coprs.backbones.feature_cache import FeatureCache

    base = tmp_path_factory.mktemp("cwd")
    original = FeatureCache.__init__

    def init(self, root, *args, **kwargs):
        original(self, root if Path(root).is_absolute() else base / root, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(FeatureCache, "__init__", init)
        yield


@pytest.fixture(scope="session", autouse=True)
def _coprs_home(tmp_path_factory):
    """Tiny models are built into a per-session folder, never into the user's cache."""
    with using_coprs_home(tmp_path_factory.mktemp("coprs_home")):
        yield


@pytest.fixture(scope="session")
def tiny_qwen_dir(tmp_path_factory):
    """A tiny Qwen2.5-VL saved with save_pretrained (the layout of a real checkpoint folder)."""
    from coprs.testing.tiny_qwen import save_tiny_qwen2_5_vl

    return save_tiny_qwen2_5_vl(tmp_path_factory.mktemp("tiny_qwen"), seed=0)


@pytest.fixture(scope="session")
def tiny_policy(tiny_qwen_dir):
    from coprs.policies import Qwen25VLPolicy

    return Qwen25VLPolicy(model_path=str(tiny_qwen_dir), max_pixels=112 * 112, max_new_tokens=16)


@pytest.fixture(scope="session")
def tiny_segmentor():
    """The tiny CoPRS assembly of configs/coprs/coprs_tiny_shapes_cpu.py (shared; don't train)."""
    from coprs.apis import init_segmentor

    return init_segmentor(str(TINY_CONFIG))
