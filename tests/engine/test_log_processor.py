"""FreshLogProcessor: a training line shows only the keys updated since the previous one."""

import copy
import types

from mmengine.logging import MessageHub

from coprs.engine import FreshLogProcessor


def _line(processor, hub) -> set[str]:
    return set(processor._collect_scalars([], types.SimpleNamespace(message_hub=hub), "train"))


def test_a_line_shows_the_keys_updated_since_the_last_one_also_after_a_resume():
    hub = MessageHub("fresh_log_test")
    processor = FreshLogProcessor(by_epoch=False, window_size=20)
    hub.update_scalar("train/grad_norm", 2.0)
    hub.update_scalar("train/loss", 1.0)
    assert _line(processor, hub) == {"grad_norm", "loss"}
    hub.update_scalar("train/overlong_step", 1.0)  # a skipped step
    assert _line(processor, hub) == {"overlong_step"}
    hub.update_scalar("train/loss", 0.5)  # updated after the last line, before the checkpoint
    # resume: a new process (and processor) with the checkpoint's message hub
    resumed = MessageHub("fresh_log_test_resumed")
    resumed.load_state_dict(copy.deepcopy(hub.state_dict()))
    processor = FreshLogProcessor(by_epoch=False, window_size=20)
    resumed.update_scalar("train/loss_pg", 0.1)
    # the uninterrupted run's line: not the stale overlong_step and grad_norm
    assert _line(processor, resumed) == {"loss", "loss_pg"}
    assert _line(processor, resumed) == set()
    # a hub without the counts (a fresh run) shows every key, as mmengine does
    fresh = MessageHub("fresh_log_test_fresh")
    fresh.update_scalar("train/loss", 1.0)
    assert _line(FreshLogProcessor(by_epoch=False, window_size=20), fresh) == {"loss"}
