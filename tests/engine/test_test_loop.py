"""The evaluation path batches: batched greedy predictions equal per-sample ones."""

import numpy as np
import pytest


def test_batched_predictions_equal_per_sample(tiny_segmentor):
    rng = np.random.default_rng(0)
    # different sizes and instruction lengths: the batch is left padded
    images = [rng.integers(0, 255, (112, 112, 3), dtype=np.uint8),
              rng.integers(0, 255, (80, 100, 3), dtype=np.uint8),
              rng.integers(0, 255, (60, 60, 3), dtype=np.uint8)]
    instructions = ["the red circle", "the shape left of the largest blue square", "x"]
    batched = tiny_segmentor.predict_images(images, instructions, max_new_tokens=12)
    for img, ins, b in zip(images, instructions, batched):
        (one,) = tiny_segmentor.predict_images([img], [ins], max_new_tokens=12)
        assert one.response == b.response
        assert one.format_ok == b.format_ok
        np.testing.assert_array_equal(one.mask, b.mask)
        np.testing.assert_allclose(one.heatmap, b.heatmap, atol=1e-5)


def test_predictions_after_a_forced_prefix(tiny_segmentor):
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 255, (112, 112, 3), dtype=np.uint8),
              rng.integers(0, 255, (80, 100, 3), dtype=np.uint8)]
    instructions, prefixes = ["the red circle", "x"], ["<think>I see a red circle.", "<think>"]
    batched = tiny_segmentor.predict_images(images, instructions, max_new_tokens=6,
                                            response_prefixes=prefixes)
    for img, ins, prefix, b in zip(images, instructions, prefixes, batched):
        assert b.response.startswith(prefix) and len(b.response) > len(prefix)
        (one,) = tiny_segmentor.predict_images([img], [ins], max_new_tokens=6,
                                               response_prefixes=[prefix])
        assert one.response == b.response
        np.testing.assert_array_equal(one.mask, b.mask)
    with pytest.raises(ValueError, match="not both"):
        tiny_segmentor.predict_images(images, instructions, responses=prefixes,
                                      response_prefixes=prefixes)


def test_flat_metrics_keeps_the_scalars_of_every_split():
    from coprs.engine import flat_metrics

    results = {"shapes/val": {"gIoU": 0.5, "n": 64, "by_type": {"relation": {"gIoU": 0.1}},
                              "unreadable": [], "flag": True},
               "refcoco/val": {"cIoU": 0.25}}
    assert flat_metrics(results) == {"shapes/val/gIoU": 0.5, "shapes/val/n": 64.0,
                                     "refcoco/val/cIoU": 0.25}


def test_a_dataset_that_cannot_be_built_loses_no_other_split(tmp_path, capsys):
    """``coprs test`` over two datasets, the second with a wrong path: the first is evaluated,
    printed and written to --out (with the lines it dropped while loading), and the run ends
    with an error naming the second's config key."""
    import json

    from mmengine.config import Config

    from coprs.cli import main
    from coprs.testing.data_fixtures import make_jsonl_fixture

    from ..conftest import TINY_CONFIG  # noqa: TID252

    make_jsonl_fixture(tmp_path / "mine")  # 3 usable lines and 3 that are dropped at load
    base = Config.fromfile(str(TINY_CONFIG.parents[1] / "_base_" / "datasets" / "jsonl.py"))
    good = base.test_cfg.datasets[0]
    good.update(data_root=str(tmp_path / "mine"), ann_file="val.jsonl")
    bad = dict(good, ann_file="nope.jsonl")
    cfg = Config.fromfile(str(TINY_CONFIG))
    cfg.test_cfg.datasets = [good, bad]
    cfg.dump(str(tmp_path / "cfg.py"))
    assert main(["test", str(tmp_path / "cfg.py"), "--reasoning", "gold", "--work-dir",
                 str(tmp_path / "t"), "--out", str(tmp_path / "r.json")]) == 2
    out, err = capsys.readouterr()
    assert "error: not evaluated (the other datasets were): test_cfg.datasets.1 " \
           "JsonlSegDataset: FileNotFoundError" in err and "nope.jsonl" in err
    assert "mine/val: n=3" in out and "dropped at load 3" in out
    assert out.count("  dropped at load: ") == 3
    res = json.loads((tmp_path / "r.json").read_text())
    assert res["mine/val"]["n"] == 3 and res["mine/val"]["n_dropped_at_load"] == 3
    assert any("does not exist" in d for d in res["mine/val"]["dropped_at_load"])
    assert list(res["not_evaluated"]) == ["test_cfg.datasets.1"]


def test_a_greedy_generation_engine_gives_the_policys_own_responses(tmp_path):
    """``test_cfg.generation_engine`` (here the transformers engine, greedy) writes the same
    responses and masks as the policy's own ``generate``; the fingerprint of a resumable run
    tells the two apart."""
    import json

    from mmengine.config import Config

    from coprs.cli import main

    from ..conftest import TINY_CONFIG  # noqa: TID252

    cfg = Config.fromfile(str(TINY_CONFIG))
    cfg.test_cfg.datasets = [dict(cfg.test_cfg.datasets[0], num_samples=4)]
    cfg.test_dataloader.batch_size = 2
    cfg.dump(str(tmp_path / "cfg.py"))
    runs = {}
    for name, extra in (("own", []), ("engine", ["--cfg-options",
                                                 "test_cfg.generation_engine.type=HFRolloutEngine"])):
        assert main(["test", str(tmp_path / "cfg.py"), "--reasoning", "generated", "empty",
                     "--max-new-tokens", "6", "--work-dir", str(tmp_path / name), *extra]) == 0
        runs[name] = {mode: [json.loads(x) for x in (
            tmp_path / name / f"per_sample_{mode}" / "shapes_test" / "per_sample.jsonl"
        ).read_text().splitlines()] for mode in ("generated", "empty")}
    for mode in ("generated", "empty"):
        assert [(r["response"], r["iou"]) for r in runs["own"][mode]] == \
               [(r["response"], r["iou"]) for r in runs["engine"][mode]]
    fingerprints = [json.loads((tmp_path / n / "per_sample_generated" / "shapes_test" /
                                "run.json").read_text())["fingerprint"] for n in runs]
    assert fingerprints[0]["engine"] is None and fingerprints[1]["engine"] is not None


def test_two_datasets_with_one_name_and_split_are_an_error(tmp_path, capsys):
    """Their metrics and per-sample records would replace each other's."""
    from mmengine.config import Config

    from coprs.cli import main

    from ..conftest import TINY_CONFIG  # noqa: TID252

    cfg = Config.fromfile(str(TINY_CONFIG))
    first = dict(cfg.test_cfg.datasets[0], num_samples=2)
    cfg.test_cfg.datasets = [first, dict(first, seed=5)]
    cfg.dump(str(tmp_path / "cfg.py"))
    assert main(["test", str(tmp_path / "cfg.py"), "--reasoning", "gold", "--work-dir",
                 str(tmp_path / "w")]) == 2
    assert "test_cfg.datasets.1 is shapes/test again" in capsys.readouterr().err


@pytest.mark.parametrize("option", ["test_cfg.generation_engine.tensor_parallel_size=2",
                                    "test_cfg.generation_engine.llm_kwargs.tensor_parallel_size=2"])
def test_a_tensor_parallel_engine_is_refused_before_any_mode_is_evaluated(tmp_path, capsys,
                                                                          option):
    from coprs.cli import main
    from coprs.engine.test_loop import ReasonSegTestLoop, check_generation_engine

    from ..conftest import TINY_CONFIG  # noqa: TID252

    assert main(["test", str(TINY_CONFIG), "--vllm", "--reasoning", "gold", "empty",
                 "--work-dir", str(tmp_path / "w"), "--cfg-options", option]) == 2
    assert "tensor_parallel_size=2: evaluation generates with one GPU per process" in \
        capsys.readouterr().err
    assert not (tmp_path / "w" / "per_sample_gold").exists()  # the gold mode never ran
    check_generation_engine(dict(type="VLLMRolloutEngine", tensor_parallel_size=1))
    with pytest.raises(ValueError, match="tensor_parallel_size=4"):
        ReasonSegTestLoop(None, {}, {}, [{}], generation_engine=dict(
            type="VLLMRolloutEngine", llm_kwargs=dict(tensor_parallel_size=4)))
