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
