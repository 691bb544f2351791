import math

import pytest
import torch

from coprs.priors import HeatmapPrior
from coprs.structures import PolicyOutput


def _algorithm1(prior: HeatmapPrior, e_conc, keys):
    """Paper Algorithm 1 with explicit loops over heads and pixels."""
    b, _, h, w = keys.shape
    q = prior.query_head(e_conc)
    k = prior.key_mlp(keys.permute(0, 2, 3, 1))  # B x h x w x d_k
    d_h = prior.head_dim
    s = torch.zeros(b, prior.num_heads, h, w)
    for i in range(prior.num_heads):
        wq = prior.w_q.weight[i * d_h:(i + 1) * d_h]  # d_h x d_q
        wk = prior.w_k.weight[i * d_h:(i + 1) * d_h]
        q_i = q @ wq.T  # B x d_h
        k_i = k @ wk.T  # B x h x w x d_h
        for u in range(h):
            for v in range(w):
                s[:, i, u, v] = (q_i * k_i[:, u, v]).sum(-1) / math.sqrt(d_h)
    return prior.fuse(s)


def test_heatmap_matches_algorithm_1_and_shapes():
    torch.manual_seed(0)
    prior = HeatmapPrior(query_dim=24, key_in_dim=16, d_q=12, d_k=10, attn_dim=8, num_heads=4)
    e = torch.randn(2, 24)
    keys = torch.randn(2, 16, 5, 6)
    out = prior(PolicyOutput(hidden=e, responses=["a", "b"], has_token=[True, False]), keys)
    assert out.heatmap.shape == (2, 1, 5, 6)
    assert out.dense.shape == (2, 1, 20, 24)
    assert out.valid == [True, False]
    with torch.no_grad():
        torch.testing.assert_close(out.heatmap, _algorithm1(prior, e, keys), atol=1e-5,
                                   rtol=1e-5)


def test_heatmap_depends_on_the_query():
    torch.manual_seed(0)
    prior = HeatmapPrior(query_dim=8, key_in_dim=8, d_q=8, d_k=8, attn_dim=8, num_heads=2)
    keys = torch.randn(1, 8, 4, 4)
    a = prior(PolicyOutput(torch.randn(1, 8), ["x"], [True]), keys).heatmap
    b = prior(PolicyOutput(torch.randn(1, 8), ["x"], [True]), keys).heatmap
    assert not torch.allclose(a, b)


def test_added_path_sizes_match_the_paper():
    from coprs.decoders import PriorDecoder

    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    dec = n(PriorDecoder(preset="sam"))
    assert n(PriorDecoder(preset="sam").mask_decoder) == 4_058_340  # SAM's mask decoder
    for d_model, lo, hi in [(2048, 4.5e6, 4.9e6), (3584, 5.0e6, 5.4e6)]:
        total = dec + n(HeatmapPrior(query_dim=d_model, key_in_dim=256))
        assert lo <= total <= hi, (d_model, total)


def test_coordinate_channels_make_keys_position_aware():
    torch.manual_seed(0)
    prior = HeatmapPrior(query_dim=8, key_in_dim=4, d_q=8, d_k=8, attn_dim=8, num_heads=2,
                         coord_channels=True)
    assert prior.key_mlp[0].in_features == 6
    keys = torch.zeros(1, 4, 5, 5)  # features identical everywhere
    out = prior(PolicyOutput(torch.randn(1, 8), ["x"], [True]), keys).heatmap
    assert out[0, 0].std() > 0  # only the coordinates can vary the scores
    plain = HeatmapPrior(query_dim=8, key_in_dim=4, d_q=8, d_k=8, attn_dim=8, num_heads=2)
    s = plain.scores(torch.randn(1, 8), keys)
    assert torch.allclose(s, s[..., :1, :1].expand_as(s))


def test_key_convs_give_keys_spatial_context():
    torch.manual_seed(0)
    plain = HeatmapPrior(query_dim=8, key_in_dim=4, d_q=8, d_k=8, attn_dim=8, num_heads=2)
    assert len(plain.key_convs) == 0  # the paper's per-pixel MLP: no extra parameters
    conv = HeatmapPrior(query_dim=8, key_in_dim=4, d_q=8, d_k=8, attn_dim=8, num_heads=2,
                        key_convs=2, coord_channels=True)
    assert conv.key_convs[0].in_channels == 6 and conv.key_mlp[0].in_features == 8
    # a single changed feature pixel changes the scores of its neighbours only with key convs
    e = torch.randn(1, 8)
    keys = torch.randn(1, 4, 7, 7)
    bumped = keys.clone()
    bumped[0, :, 3, 3] += 5.0
    for prior, reaches in ((plain, False), (conv, True)):
        with torch.no_grad():
            d = (prior.scores(e, bumped) - prior.scores(e, keys)).abs()[0].sum(0)
        assert d[3, 3] > 0
        assert bool(d[3, 4] > 1e-6) is reaches and bool(d[5, 3] > 1e-6) is reaches
        assert d[0, 0] < 1e-6  # beyond two 3x3 convs' reach


def test_position_grid_lets_the_query_place_the_heatmap():
    """With identical keys everywhere only the query's position map can say where: two queries
    learn to light two opposite corners of the grid."""
    torch.manual_seed(0)
    prior = HeatmapPrior(query_dim=2, key_in_dim=4, d_q=8, d_k=8, attn_dim=8, num_heads=2,
                         position_grid=4)
    assert prior.position_head.out_features == 16 and prior.fuse[0].in_channels == 3
    assert "position_head.weight" not in HeatmapPrior(2, 4, 8, 8, 8, 2).state_dict()
    keys = torch.zeros(2, 4, 8, 8)
    e = torch.eye(2)  # query 0: upper left, query 1: lower right
    target = torch.zeros(2, 1, 8, 8)
    target[0, 0, :3, :3] = 1
    target[1, 0, 5:, 5:] = 1
    opt = torch.optim.Adam(prior.parameters(), lr=1e-2)
    for _ in range(150):
        heat = prior(PolicyOutput(e, ["a", "b"], [True, True]), keys).heatmap
        loss = torch.nn.functional.binary_cross_entropy_with_logits(heat, target)
        opt.zero_grad()
        loss.backward()
        opt.step()

    def iou(heat):
        pred, gt = heat.detach() > 0, target > 0
        return (pred & gt).sum((1, 2, 3)) / (pred | gt).sum((1, 2, 3)).clamp(min=1)

    assert (iou(heat) > 0.8).all(), iou(heat)
    assert prior.position_map(e, (5, 7)).shape == (2, 1, 5, 7)  # resized to any key grid
    # it is the position map that places them: silenced, the corners are lost
    with torch.no_grad():
        prior.position_head.weight.zero_()
        prior.position_head.bias.zero_()
        heat = prior(PolicyOutput(e, ["a", "b"], [True, True]), keys).heatmap
    assert not (iou(heat) > 0.8).all(), iou(heat)


def test_position_grid_must_not_be_negative():
    with pytest.raises(ValueError, match="position_grid must be >= 0"):
        HeatmapPrior(query_dim=8, key_in_dim=8, position_grid=-1)
