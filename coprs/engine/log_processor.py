"""The training log's processor (LOG_PROCESSORS registry)."""

from __future__ import annotations

from mmengine.runner import LogProcessor

from ..registry import LOG_PROCESSORS

__all__ = ["FreshLogProcessor"]


@LOG_PROCESSORS.register_module()
class FreshLogProcessor(LogProcessor):
    """mmengine's ``LogProcessor``, except that a training log line leaves out every key that no
    iteration has updated since the previous line.

    mmengine reports each key's mean over its last ``window_size`` updates, whenever they were.
    A key that stops being logged would repeat its last mean for the rest of the run: the
    warm-up's ``loss_lm`` in every GRPO line (and in ``scalars.json``, and so in the curves), or
    a step's losses in the lines of the non-finite steps skipped after it. Keys updated in the
    window are reported as mmengine reports them. Validation and test lines are left as they are.

    Each key's number of updates at the last line is kept in the message hub (runtime info
    :data:`UPDATES_KEY`), so it is saved in checkpoints: the first line of a resumed run shows
    only the keys updated since the last line before the checkpoint, as the uninterrupted run
    would, not every value the checkpoint's hub holds.
    """

    #: the message hub's runtime info with each key's number of updates at the last line
    UPDATES_KEY = "fresh_log_processor/updates"

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._updates: dict[str, int] | None = None  # 'train/<key>' -> its updates so far

    def _collect_scalars(self, custom_cfg, runner, mode, reserve_prefix=False) -> dict:
        tag = super()._collect_scalars(custom_cfg, runner, mode, reserve_prefix)
        if mode != "train":
            return tag
        hub = runner.message_hub
        if self._updates is None:  # the first line: a resumed run's hub has the counts saved
            self._updates = {k: int(v) for k, v in (hub.get_info(self.UPDATES_KEY) or {}).items()}
        for full, buffer in hub.log_scalars.items():
            if not full.startswith("train/"):
                continue
            count = len(buffer.data[0])
            full_history = count >= buffer.max_length  # a full buffer no longer grows
            if self._updates.get(full) == count and not full_history:
                tag.pop(full if reserve_prefix else full[len("train/"):], None)
            self._updates[full] = count
        hub.update_info(self.UPDATES_KEY, dict(self._updates))
        return tag
