"""Training/evaluation loops, hooks, wrappers, the log processor and the FSDP strategy (LOOPS /
HOOKS / LOG_PROCESSORS / MODEL_WRAPPERS / STRATEGIES registries)."""

from .hooks import (
    AtomicCheckpointHook,
    AtomicLocalBackend,
    CheckpointMatchHook,
    PlainCheckpointStateHook,
    SegLossScheduleHook,
    TrainProgressBarHook,
    TrainTimeBudgetHook,
)
from .log_processor import FreshLogProcessor
from .loops import STAGE_KINDS, ReasoningSegTrainLoop
from .optim import GroupedOptimWrapperConstructor
from .test_loop import (
    REASONING_MODES,
    ReasonSegTestLoop,
    ReasonSegValLoop,
    drop_validation,
    flat_metrics,
)
from .wrappers import CoprsDistributedDataParallel, CoprsFSDPStrategy, CoprsFullyShardedDataParallel

__all__ = [
    "ReasoningSegTrainLoop", "STAGE_KINDS", "ReasonSegTestLoop", "ReasonSegValLoop",
    "REASONING_MODES", "flat_metrics", "drop_validation",
    "SegLossScheduleHook", "PlainCheckpointStateHook", "AtomicLocalBackend",
    "AtomicCheckpointHook", "CheckpointMatchHook", "TrainTimeBudgetHook", "TrainProgressBarHook",
    "CoprsDistributedDataParallel", "CoprsFullyShardedDataParallel", "CoprsFSDPStrategy",
    "GroupedOptimWrapperConstructor", "FreshLogProcessor",
]
