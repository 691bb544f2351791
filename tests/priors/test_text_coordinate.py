import pytest
import torch

from coprs.priors import TextCoordinatePrior, coordinates_to_frame
from coprs.structures import ImageGeometry, PolicyOutput

SAME = ImageGeometry(view_hw=(112, 112), frame_hw=(112, 112))


def _answer(bbox, points=((15, 25), (20, 30))):
    pts = ", ".join(f"[{x}, {y}]" for x, y in points)
    return f'<think>t</think><answer>{{"bbox": {list(bbox)}, "points": [{pts}]}}</answer>'


def test_view_to_frame_mapping_and_clamping():
    # a 300 x 600 image: the policy sees 56 x 112 (say), the frame holds it as 512 x 1024
    geom = ImageGeometry(view_hw=(56, 112), frame_hw=(512, 1024))
    box, pts = coordinates_to_frame((10, 5, 50, 20), [(11, 6), (200, -3)], geom)
    s_x, s_y = 1024 / 112, 512 / 56
    assert box == pytest.approx([10 * s_x, 5 * s_y, 50 * s_x, 20 * s_y])
    assert pts[0] == pytest.approx([11 * s_x, 6 * s_y])
    assert pts[1] == [1023.0, 0.0]  # clamped into the image
    clamped, _ = coordinates_to_frame((-5, -5, 500, 500), [], geom)
    assert clamped == [0.0, 0.0, 1024.0, 512.0]
    assert coordinates_to_frame((120, 0, 130, 10), [], geom) is None  # entirely right of it
    assert coordinates_to_frame((10, 10, 10.05, 20), [], SAME) is None  # thinner than 1 px
    assert coordinates_to_frame((10, 10, 10.05, 20), [], SAME, min_box_size=0.01) is not None


def test_forward_marks_invalid_rows_and_never_raises():
    prior = TextCoordinatePrior()
    texts = [_answer((10, 20, 30, 40)), "I do not know", _answer((200, 200, 300, 300)),
             _answer((10, 20, 30, 40), points=((1, 2),))]
    out = prior(PolicyOutput(hidden=None, responses=texts, geometry=[SAME] * 4),
                torch.zeros(4, 8, 28, 28))
    assert out.valid == [True, False, False, False]
    assert out.boxes.shape == (4, 4) and out.points.shape == (4, 2, 2)
    assert out.boxes[0].tolist() == [10, 20, 30, 40]
    assert out.points[0].tolist() == [[15, 25], [20, 30]]
    assert out.boxes[1:].abs().sum() == 0 and out.points[1:].abs().sum() == 0
    assert out.sparse is None and out.dense is None


def test_needs_geometry_and_reads_segzero_format():
    prior = TextCoordinatePrior(num_points=0)
    with pytest.raises(ValueError, match="geometry"):
        prior(PolicyOutput(hidden=None, responses=["x"]), torch.zeros(1, 1, 1, 1))
    out = prior(PolicyOutput(hidden=None, responses=[_answer((1, 2, 3, 4), points=())],
                             geometry=[SAME]), torch.zeros(1, 1, 1, 1))
    assert out.points is None and out.valid == [True]
    assert prior.special_token is None and prior.prompt_template == "segzero"
    assert TextCoordinatePrior().parse_response(_answer((1, 2, 3, 4))).valid
    assert not TextCoordinatePrior().parse_response(_answer((3, 2, 1, 4))).valid
    assert sum(p.numel() for p in prior.parameters()) == 0
