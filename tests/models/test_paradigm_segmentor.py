"""The segmentor wires the LISA-style and Seg-Zero-style parts generically."""

import numpy as np
import pytest
from mmengine.config import Config

from coprs.registry import MODELS
from coprs.utils import register_all_modules

from ..conftest import REPO  # noqa: TID252

LISA = REPO / "configs" / "lisa" / "lisa_tiny_shapes_cpu.py"
SEGZERO = REPO / "configs" / "segzero" / "segzero_tiny_shapes_cpu.py"


@pytest.fixture(scope="module")
def built():
    register_all_modules()
    return {name: MODELS.build(Config.fromfile(str(path)).model)
            for name, path in (("lisa", LISA), ("segzero", SEGZERO))}


def _sample():
    from coprs.datasets.shapes import ShapesWorld

    return ShapesWorld().sample(7)


def test_widths_are_filled_in_from_the_decoder_and_backbone(built):
    lisa, segzero = built["lisa"], built["segzero"]
    fcs = lisa.prior.text_hidden_fcs
    assert fcs[0].in_features == lisa.policy.hidden_size
    assert fcs[2].out_features == lisa.decoder.transformer_dim == 32
    assert lisa.decoder.img_size == lisa.vision_backbone.img_size == 112
    assert segzero.decoder.img_size == 112 and segzero.policy.special_token is None


def test_predict_gold_and_malformed_responses(built):
    s = _sample()
    img = np.ascontiguousarray(s.image[:100])  # not square: the frame holds it as 112 x 100
    for name, gold in (("lisa", s.response_lisa), ("segzero", s.response_segzero)):
        model = built[name]
        good, bad = model.predict_images([img, img], [s.instruction] * 2,
                                         [gold, "I cannot tell."])
        assert good.format_ok and not bad.format_ok, name
        assert good.mask.shape == bad.mask.shape == (100, 112)
        if name == "segzero":
            assert not bad.mask.any()  # no usable prompt: an empty mask, flagged, no exception
            assert good.cot == s.gold_cot
        else:
            assert good.cot == "It is " + s.gold_answer


def test_geometry_maps_view_and_ground_truth_points(built):
    model = built["segzero"]
    geom = model.image_geometry([(100, 112), (300, 600)], [{"points": [[56, 50]]}, {}])
    assert geom[0].view_hw == (112, 112) and geom[0].frame_hw == (100, 112)  # smart_resize
    assert geom[0].gt_points == [[56.0, 50.0]]
    assert geom[1].frame_hw == (56, 112) and geom[1].gt_points is None


def test_loss_reports_format_from_the_prior(built):
    s = _sample()
    sample = {"instruction": s.instruction, "response": "It is nothing.",
              "vision_gt_mask": s.gt_mask, "valid_hw": (112, 112)}
    losses = built["lisa"].loss([s.image], [sample])
    assert losses["format_ok"].item() == 0.0 and "seg/mask_bce" in losses
    sample["response"] = s.response_segzero
    losses = built["segzero"].loss([s.image], [sample])
    assert losses["format_ok"].item() == 1.0
    assert losses["loss_seg"].requires_grad and losses["loss_lm"].requires_grad


@pytest.mark.parametrize("stop", [False, True])
def test_answer_naming_on_a_token_that_is_not_last_warns(recwarn, stop):
    """The answer-naming loss and the next-token loss both shape the special token's state when
    responses go on after it (LISA's "<SEG>."): building that combination warns and says how to
    avoid it; with responses that end at the token it builds quietly."""
    cfg = Config.fromfile(str(LISA)).model
    cfg.rl.update(answer_coef=1.0)
    cfg.policy.update(stop_at_special_token=stop)
    register_all_modules()
    MODELS.build(cfg)
    warned = [str(w.message) for w in recwarn if "answer_coef" in str(w.message)]
    if stop:
        assert warned == []
    else:
        assert len(warned) == 1 and "model.policy.stop_at_special_token=True" in warned[0]
