"""Every benchmark script runs in --quick mode and prints one JSON object last.

Speed is measured by the scripts themselves (docs/benchmarks.md, "Performance"); these tests
check only that they run and report the expected keys, never a ratio.
"""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "tools" / "benchmarks"

EXPECTED = {
    "rollout": {"speedup", "same_tokens", "seconds", "image_tokens", "new_tokens"},
    "train_step": {"coprs_over_policy_only_flops", "tflops", "overhead_fraction",
                   "phase_seconds", "coprs_vision_per_row_over_per_group"},
    "feature_cache": {"speedup", "seconds", "cached_files", "feature_grid"},
    "eval_throughput": {"speedup", "same_predictions", "samples_per_second"},
    "infer_batch": {"speedup", "same_predictions", "images_per_second"},
    "warmup_batch": {"step_seconds", "sample_seconds", "step_over_smallest", "batch_sizes"},
    "warmup_step": {"step_seconds", "step_over_committed", "variants"},
    "micro_batch": {"peak_over_whole", "step_over_whole", "peak_mib", "same_loss"},
    "token_rows": {"peft_over_coprs", "same_result", "seconds", "peft_extra_mib"},
}


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"coprs_bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_benchmark_quick_mode_prints_json(name, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))  # the scripts import their _common helper
    monkeypatch.delitem(sys.modules, "_common", raising=False)
    result = _load(name).main(["--quick"])
    last = capsys.readouterr().out.strip().splitlines()[-1]
    printed = json.loads(last)
    assert printed == json.loads(json.dumps(result))
    assert printed["benchmark"] == name and printed["quick"] is True
    assert EXPECTED[name] <= set(printed), EXPECTED[name] - set(printed)
    if name == "warmup_batch":
        assert set(printed["step_over_smallest"]) == {"1", "2"}
        assert printed["step_over_smallest"]["1"] == 1.0
        assert all(v > 0 for v in printed["step_seconds"].values())
    if name == "warmup_step":
        assert set(printed["step_over_committed"]) == {"committed", "no_fused",
                                                       "no_tower_cache", "neither"}
        assert printed["step_over_committed"]["committed"] == 1.0
        assert all(v > 0 for v in printed["step_seconds"].values())
    if name == "token_rows":  # coprs's token-rows layer computes what peft's does
        assert printed["same_result"] is True
    if name == "micro_batch":  # three variants, each the whole batch's update
        assert set(printed["peak_over_whole"]) == {"whole", "8", "2"}
        assert printed["same_loss"] is True
    if name == "train_step":
        assert set(printed["phase_seconds"]) >= {"rollout", "reward", "reference", "actor",
                                                 "optimizer"}
