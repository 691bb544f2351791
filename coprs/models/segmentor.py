"""ReasoningSegmentor: policy + vision backbone + prior interface + decoder, wired from config."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from mmengine.model import BaseModel
from PIL import Image

from ..policies.prompts import parse_think_response
from ..registry import DECODERS, MODELS, POLICIES, PRIORS, VISION_BACKBONES
from ..structures import PolicyOutput, PriorOutput, Rollout, SegmentationResult

__all__ = ["ReasoningSegmentor", "postprocess_logits"]


def postprocess_logits(logits: torch.Tensor, img_size: int, valid_hw: tuple[int, int],
                       ori_hw: tuple[int, int]) -> torch.Tensor:
    """Mask logits at the decoder resolution → logits at the original image size.

    Upsample to the padded S x S frame, remove the padding, resize to the original size (SAM's
    ``postprocess_masks``).

    Args:
        logits: 1 x m x m (or m x m) logits for one image.
        img_size: S, the side of the padded vision input.
        valid_hw: (h, w) of the unpadded region inside S x S.
        ori_hw: (H, W) of the original image.

    Returns:
        H x W float logits.
    """
    x = logits.reshape(1, 1, *logits.shape[-2:]).float()
    x = F.interpolate(x, size=(img_size, img_size), mode="bilinear", align_corners=False)
    x = x[..., : valid_hw[0], : valid_hw[1]]
    x = F.interpolate(x, size=tuple(ori_hw), mode="bilinear", align_corners=False)
    return x[0, 0]


@MODELS.register_module()
class ReasoningSegmentor(BaseModel):
    """A reasoning segmentor assembled from four registry components (SPEC §1).

    The parts are built from their config dicts; the widths that connect them (policy hidden
    size → prior query, backbone channels → prior keys and decoder) are filled in here, so a
    config names only what differs.

    Args:
        policy: POLICIES config.
        vision_backbone: VISION_BACKBONES config.
        prior: PRIORS config.
        decoder: DECODERS config.
        feature_cache: ``dict(root=DIR, dtype='float16')`` to read (and fill) frozen backbone
            features on disk (``coprs extract-features`` precomputes them); None computes them.
        data_preprocessor: mmengine data preprocessor config (identity by default).
        init_cfg: mmengine init config.
    """

    def __init__(self, policy: dict, vision_backbone: dict, prior: dict, decoder: dict,
                 feature_cache: dict | None = None, data_preprocessor: dict | None = None,
                 init_cfg: dict | None = None) -> None:
        super().__init__(data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        self.policy = POLICIES.build(policy)
        self.vision_backbone = VISION_BACKBONES.build(vision_backbone)
        keys_dim = self.vision_backbone.out_channels
        self.prior = PRIORS.build(prior, default_args=dict(query_dim=self.policy.hidden_size,
                                                           key_in_dim=keys_dim))
        self.decoder = DECODERS.build(decoder, default_args=dict(key_in_dim=keys_dim))
        self.feature_cache = None
        if feature_cache is not None:
            from ..backbones.feature_cache import FeatureCache

            self.feature_cache = FeatureCache(backbone_key=self.vision_backbone.cache_key,
                                              **feature_cache)
        want, have = self.prior.special_token, self.policy.special_token
        if want is not None and want != have:
            raise ValueError(
                f"{type(self.prior).__name__} reads the hidden state of {want!r} but the policy "
                f"is configured with special_token={have!r}; set model.policy.special_token="
                f"'{want}'"
            )

    # ------------------------------------------------------------------ pieces
    def encode_images(self, images: list[np.ndarray]) -> tuple[torch.Tensor, list[tuple[int, int]]]:
        """B RGB arrays → (keys B x C x h x w, valid (h, w) per image in the padded frame).

        With a feature cache, cached images are read from disk and only the others are encoded
        (and then stored).
        """
        if self.feature_cache is None:
            x, valid = self.vision_backbone.preprocess(images)
            return self.vision_backbone(x), valid
        cached = [self.feature_cache.get(im) for im in images]
        todo = [i for i, c in enumerate(cached) if c is None]
        if todo:
            x, _ = self.vision_backbone.preprocess([images[i] for i in todo])
            for i, feats in zip(todo, self.vision_backbone(x)):
                self.feature_cache.put(images[i], feats)
                cached[i] = feats
        ref = self.vision_backbone.pixel_mean
        valid = [self.vision_backbone.valid_hw(im.shape[:2]) for im in images]
        return torch.stack([c.to(ref.device, ref.dtype) for c in cached]), valid

    def decode(self, policy_out: PolicyOutput, image_keys: torch.Tensor
               ) -> tuple[PriorOutput, dict[str, torch.Tensor]]:
        """Prior and mask logits for B responses over their B image keys."""
        prior = self.prior(policy_out, image_keys)
        return prior, self.decoder(image_keys, prior)

    def rollouts_from_text(self, responses: list[str]) -> list[Rollout]:
        """Wrap given response texts (e.g. gold reasoning) as rollouts for teacher forcing."""
        tok = self.policy.tokenizer
        return [Rollout(text=r, token_ids=tok.encode(r, add_special_tokens=False))
                for r in responses]

    # -------------------------------------------------------------- inference
    @torch.no_grad()
    def predict_images(self, images: list[np.ndarray], instructions: list[str],
                       responses: list[str] | None = None, max_new_tokens: int | None = None
                       ) -> list[SegmentationResult]:
        """Segment B (image, instruction) pairs.

        Args:
            images: B RGB uint8 arrays (H x W x 3), any sizes.
            instructions: B instructions.
            responses: optional B responses to teacher-force instead of generating (the
                "gold reasoning" evaluation mode).
            max_new_tokens: response budget for greedy generation.

        Returns:
            B :class:`SegmentationResult` at the original image sizes.
        """
        pil = [Image.fromarray(im) for im in images]
        if responses is None:
            rollouts = [g[0] for g in self.policy.generate(pil, instructions,
                                                           max_new_tokens=max_new_tokens)]
        else:
            rollouts = self.rollouts_from_text(responses)
        policy_out = self.policy.readout(pil, instructions, rollouts)
        keys, valid = self.encode_images(images)
        prior, dec = self.decode(policy_out, keys)
        results = []
        size = self.vision_backbone.img_size
        for b, (img, rollout) in enumerate(zip(images, rollouts)):
            ori = img.shape[:2]
            mask = postprocess_logits(dec["mask_logits"][b, :1], size, valid[b], ori) > 0
            heat = prior.heatmap if prior.heatmap is not None else dec["mask_logits"]
            heatmap = torch.sigmoid(postprocess_logits(heat[b, :1], size, valid[b], ori))
            parsed = parse_think_response(rollout.text, self.policy.special_token or "")
            results.append(SegmentationResult(
                cot=parsed.cot,
                response=rollout.text,
                heatmap=heatmap.cpu().numpy().astype(np.float32),
                mask=mask.cpu().numpy(),
                format_ok=bool(parsed.valid and policy_out.has_token[b] and prior.valid[b]),
            ))
        return results

    def forward(self, inputs, data_samples=None, mode: str = "predict"):
        """mmengine entry point.

        ``mode='predict'``: ``inputs`` are B RGB arrays, ``data_samples`` B dicts with an
        ``instruction`` (and optionally ``response`` to teacher-force); returns B
        :class:`SegmentationResult`. ``mode='tensor'`` returns the raw mask logits. Training
        steps run in the training loops (``coprs.engine``), which call the pieces above.
        """
        instructions = [d["instruction"] for d in data_samples]
        if mode == "predict":
            responses = None
            if data_samples and all("response" in d for d in data_samples):
                responses = [d["response"] for d in data_samples]
            return self.predict_images(list(inputs), instructions, responses)
        if mode == "tensor":
            pil = [Image.fromarray(im) for im in inputs]
            rollouts = [g[0] for g in self.policy.generate(pil, instructions)]
            keys, _ = self.encode_images(list(inputs))
            _, dec = self.decode(self.policy.readout(pil, instructions, rollouts), keys)
            return dec["mask_logits"]
        raise ValueError(f"ReasoningSegmentor.forward: unsupported mode {mode!r}; "
                         "use 'predict' or 'tensor'")
