import pytest
import torch

from coprs.priors import LatentTokenPrior
from coprs.structures import PolicyOutput


def test_hidden_state_to_one_sparse_embedding():
    prior = LatentTokenPrior(query_dim=16, embed_dim=8)
    out = prior(PolicyOutput(hidden=torch.randn(3, 16), responses=["a"] * 3,
                             has_token=[True, False, True]), torch.randn(3, 4, 2, 2))
    assert out.sparse.shape == (3, 1, 8)
    assert out.valid == [True, False, True]
    assert out.dense is None and out.heatmap is None and out.boxes is None
    # LISA's text_hidden_fcs: Linear(D, D) - ReLU - Linear(D, C) - Dropout
    assert sum(p.numel() for p in prior.parameters()) == 16 * 16 + 16 + 16 * 8 + 8
    assert LatentTokenPrior(16, 8, hidden_dim=4).text_hidden_fcs[0].out_features == 4


def test_needs_the_hidden_state_and_parses_seg_responses():
    prior = LatentTokenPrior(query_dim=4, embed_dim=2)
    with pytest.raises(ValueError, match="<SEG>"):
        prior(PolicyOutput(hidden=None, responses=["x"]), torch.zeros(1, 1, 1, 1))
    assert prior.special_token == "<SEG>" and prior.prompt_template == "lisa"
    assert prior.parse_response("It is the red circle <SEG>.").valid
    assert not prior.parse_response("<think>a</think><REF_POS>").valid
