"""LISA-style latent-token prior: the ``<SEG>`` hidden state as one sparse prompt embedding."""

from __future__ import annotations

import torch
import torch.nn as nn

from ..policies.prompts import ParsedResponse, parse_token_response
from ..registry import PRIORS
from ..structures import PolicyOutput, PriorOutput
from .base import BasePrior

__all__ = ["LatentTokenPrior"]


@PRIORS.register_module()
class LatentTokenPrior(BasePrior):
    """The last-layer hidden state at ``<SEG>`` → MLP → one sparse prompt embedding (LISA).

    LISA's ``text_hidden_fcs``: ``Linear(D, hidden) → ReLU → Linear(hidden, C) → Dropout``,
    with ``hidden = D`` by default. The embedding is handed to a SAM prompt decoder
    (:class:`~coprs.decoders.SAMPromptDecoder`) as its only sparse prompt; there is no dense
    prior, so the segmentation loss has no prior term.

    A response without ``<SEG>`` still gets an embedding (the policy appends the token and reads
    its hidden state, as for CoPRS) and is flagged ``valid=False``.

    Args:
        query_dim: width D of the ``<SEG>`` hidden state (the policy's hidden size; filled in by
            the segmentor).
        embed_dim: width C of the decoder's prompt embeddings (filled in by the segmentor from
            the decoder's ``transformer_dim``).
        hidden_dim: width of the MLP's hidden layer; None: ``query_dim`` (LISA).
        dropout: dropout after the last layer (LISA: 0).
    """

    special_token = "<SEG>"
    prompt_template = "lisa"

    def __init__(self, query_dim: int, embed_dim: int, hidden_dim: int | None = None,
                 dropout: float = 0.0) -> None:
        super().__init__()
        hidden_dim = hidden_dim or query_dim
        self.text_hidden_fcs = nn.Sequential(
            nn.Linear(query_dim, hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, embed_dim),
            nn.Dropout(dropout),
        )
        self.embed_dim = embed_dim

    def parse_response(self, response: str) -> ParsedResponse:
        """Valid when ``<SEG>`` occurs exactly once (:func:`parse_token_response`)."""
        return parse_token_response(response, self.special_token)

    def forward(self, policy_out: PolicyOutput, image_keys: torch.Tensor) -> PriorOutput:
        """Args: ``policy_out.hidden`` B x D; image_keys B x C' x h x w (unused).

        Returns:
            :class:`PriorOutput` with ``sparse`` B x 1 x C and ``valid`` = the token was
            written by the policy.
        """
        if policy_out.hidden is None:
            raise ValueError("LatentTokenPrior needs the special token's hidden state; configure "
                             "the policy with special_token='<SEG>'")
        hidden = policy_out.hidden.to(self.text_hidden_fcs[0].weight.dtype)
        sparse = self.text_hidden_fcs(hidden).unsqueeze(1)  # B x 1 x C
        return PriorOutput(sparse=sparse, valid=list(policy_out.has_token))
