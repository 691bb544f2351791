"""ReasoningSegmentor: policy + vision backbone + prior interface + decoder, wired from config."""

from __future__ import annotations

import inspect
import warnings

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.model import BaseModel
from PIL import Image

from ..registry import DECODERS, MODELS, POLICIES, PRIORS, VISION_BACKBONES
from ..structures import ImageGeometry, PolicyOutput, PriorOutput, Rollout, SegmentationResult
from ..utils import is_meta_build, on_any_rank, repeat_each
from .micro_batch import WHOLE_BATCH

__all__ = ["ReasoningSegmentor", "postprocess_logits", "apply_update", "answer_token_ids"]


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


def image_maps(prior: PriorOutput, dec: dict, b: int, img_size: int, valid_hw: tuple[int, int],
               ori_hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Row ``b``'s heatmap (float32 probabilities) and mask (bool) at the original image size.

    The heatmap is the prior's, or the sigmoid of the mask logits for priors without one; the
    mask is the mask logits above 0 (see :func:`postprocess_logits`).
    """
    heat = prior.heatmap if prior.heatmap is not None else dec["mask_logits"]
    heatmap = torch.sigmoid(postprocess_logits(heat[b, :1], img_size, valid_hw, ori_hw))
    mask = postprocess_logits(dec["mask_logits"][b, :1], img_size, valid_hw, ori_hw) > 0
    return heatmap.cpu().numpy().astype(np.float32), mask.cpu().numpy()


def _declared(registry, cfg: dict, offered: dict) -> dict:
    """The ``offered`` connecting widths that the configured class names in its ``__init__``."""
    cls = cfg.get("type")
    cls = registry.get(cls) if isinstance(cls, str) else cls
    if cls is None:  # unknown type: let the build raise its own error
        return {}
    params = inspect.signature(cls.__init__).parameters
    return {k: v for k, v in offered.items() if k in params}


@MODELS.register_module()
class ReasoningSegmentor(BaseModel):
    """A reasoning segmentor assembled from four registry components (SPEC §1).

    The parts are built from their config dicts; the widths that connect them are filled in
    here, so a config names only what differs. Each part receives those of the following
    arguments that its ``__init__`` names: the prior ``query_dim`` (policy hidden size),
    ``key_in_dim`` (backbone channels), ``img_size`` (side of the vision frame) and
    ``embed_dim`` (the decoder's ``transformer_dim``; the decoder is then built first); the
    decoder ``key_in_dim`` and ``img_size``.

    Args:
        policy: POLICIES config.
        vision_backbone: VISION_BACKBONES config.
        prior: PRIORS config.
        decoder: DECODERS config.
        feature_cache: ``dict(root=DIR, dtype='float16')`` to read (and fill) frozen backbone
            features on disk (``coprs extract-features`` precomputes them); None computes them.
        seg_loss: MODELS config of the segmentation loss (``SegmentationLoss``: BCE on the
            prior + λ_d·Dice + λ_f·Focal on the mask, times λ_SEG); None: that default.
        rl: GRPO settings: ``clip_eps`` (0.2), ``kl_coef`` β (0.2), ``kl_kind``
            ('low_var_kl'), ``agg`` ('token-mean'), ``entropy_coef`` (0.0 as in the paper; > 0
            adds ``loss_entropy`` = −coef · the rollouts' token entropy, aggregated as ``agg``;
            the entropy is logged as ``pg/entropy`` either way); ``lm_coef`` (1.0), the weight of the
            token cross-entropy in supervised (teacher-forced) steps; ``answer_coef`` (0.0, off
            as in the paper), the weight of the answer-naming loss in supervised steps
            (:meth:`answer_loss`: the special token's state, read through the LM head, names
            the sample's ``gold_answer``), which gets a random-initialised policy's ``e_conc``
            to carry the target early; ``answer_key`` ('gold_answer'), the sample field that
            loss names (the synthetic world's ``gold_answer_region`` adds where the target is,
            for a prior with a position map); ``old_logprobs`` ('rollout'): the old policy's
            log-probs in the PPO ratio, the rollout engine's ('rollout') or the actor forward's
            own, detached ('actor', as verl recomputes them). One optimiser step per batch makes
            the two equal in exact arithmetic; 'actor' keeps the ratio at exactly 1 when the
            engine computes in other numerics (bf16 autocast in the actor, vLLM's kernels).
        data_preprocessor: mmengine data preprocessor config (identity by default).
        init_cfg: mmengine init config.
    """

    def __init__(self, policy: dict, vision_backbone: dict, prior: dict, decoder: dict,
                 feature_cache: dict | None = None, seg_loss: dict | None = None,
                 rl: dict | None = None, data_preprocessor: dict | None = None,
                 init_cfg: dict | None = None) -> None:
        super().__init__(data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        self.seg_loss = MODELS.build(seg_loss if seg_loss is not None else
                                     dict(type="SegmentationLoss"))
        self.rl = dict(clip_eps=0.2, kl_coef=0.2, kl_kind="low_var_kl", agg="token-mean",
                       entropy_coef=0.0, lm_coef=1.0, answer_coef=0.0, answer_key="gold_answer",
                       old_logprobs="rollout")
        unknown = set(rl or {}) - set(self.rl)
        if unknown:
            raise ValueError(f"unknown model.rl keys {sorted(unknown)}; valid: {sorted(self.rl)}")
        self.rl.update(rl or {})
        if self.rl["old_logprobs"] not in ("rollout", "actor"):
            raise ValueError(f"model.rl.old_logprobs={self.rl['old_logprobs']!r}: use 'rollout' "
                             "(the sampling log-probs) or 'actor' (the actor's own, detached)")
        self.policy = POLICIES.build(policy)
        if (self.rl["answer_coef"] > 0 and self.policy.special_token is not None
                and not getattr(self.policy, "stop_at_special_token", True)):
            warnings.warn(
                f"model.rl.answer_coef={self.rl['answer_coef']} asks the state of "
                f"{self.policy.special_token!r} to name the answer through the LM head, while "
                "teacher forcing also trains that state to predict the token after it "
                "(model.policy.stop_at_special_token=False); the two targets fight and greedy "
                f"responses can repeat {self.policy.special_token!r} until the token budget "
                "ends. Set model.policy.stop_at_special_token=True (docs/benchmarks.md, "
                "Paradigms)", stacklevel=2)
        self.vision_backbone = VISION_BACKBONES.build(vision_backbone)
        missing = [a for a in ("img_size", "out_channels", "grid_size")
                   if not isinstance(getattr(self.vision_backbone, a, None), int)]
        if missing:
            name = type(self.vision_backbone).__name__
            raise TypeError(f"vision backbone {name} does not set {', '.join(missing)} (integers "
                            "the prior and decoder are built from); see the VisionBackbone "
                            "contract in coprs.backbones.BaseVisionBackbone")
        keys_dim, img_size = self.vision_backbone.out_channels, self.vision_backbone.img_size
        offered = dict(query_dim=self.policy.hidden_size, key_in_dim=keys_dim, img_size=img_size)
        built_decoder = None
        if "embed_dim" in _declared(PRIORS, prior, dict(embed_dim=None)):
            built_decoder = DECODERS.build(decoder, default_args=_declared(DECODERS, decoder,
                                                                           offered))
            offered["embed_dim"] = built_decoder.transformer_dim
        self.prior = PRIORS.build(prior, default_args=_declared(PRIORS, prior, offered))
        self.decoder = built_decoder if built_decoder is not None else DECODERS.build(
            decoder, default_args=_declared(DECODERS, decoder, offered))
        self.feature_cache = None
        if feature_cache is not None and not is_meta_build():  # no weights, no features to key
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
            return self._checked_keys(self.vision_backbone(x)), valid
        cached = [self.feature_cache.get(im) for im in images]
        todo = [i for i, c in enumerate(cached) if c is None]
        if todo:
            x, _ = self.vision_backbone.preprocess([images[i] for i in todo])
            for i, feats in zip(todo, self._checked_keys(self.vision_backbone(x))):
                self.feature_cache.put(images[i], feats)
                cached[i] = feats
        ref = self.vision_backbone.pixel_mean
        valid = [self.vision_backbone.valid_hw(im.shape[:2]) for im in images]
        for c in cached:  # an entry of the cache as the backbone declares it (a stale cache)
            self._checked_keys(c[None], self.feature_cache)
        return torch.stack([c.to(ref.device, ref.dtype) for c in cached]), valid

    def _checked_keys(self, keys, cache=None) -> torch.Tensor:
        """``keys`` if they are B x out_channels x grid_size x grid_size as the backbone
        declares, else a ``ValueError`` naming the backbone (and the cache they came from)."""
        bb = self.vision_backbone
        want = (bb.out_channels, bb.grid_size, bb.grid_size)
        if isinstance(keys, torch.Tensor) and keys.dim() == 4 and tuple(keys.shape[1:]) == want:
            return keys
        from ..plugins import origin_of

        name = type(bb).__name__
        got = (f"a {type(keys).__name__}" if not isinstance(keys, torch.Tensor)
               else f"shape {tuple(keys.shape)}")
        where = (f"features read from the feature cache {cache.dir} (made by another backbone "
                 "or version: give the cache another root, or the backbone a new cache_key)"
                 if cache is not None else f"{name} ({origin_of('vision_backbones', name)})")
        raise ValueError(
            f"vision backbone {name} declares out_channels={bb.out_channels} and grid_size="
            f"{bb.grid_size}, so keys of shape (B, {', '.join(map(str, want))}), but the "
            f"{where} gave {got}; make forward() return what the attributes declare")

    def image_geometry(self, image_hws: list[tuple[int, int]], samples: list[dict] | None = None
                       ) -> list[ImageGeometry]:
        """Policy-view and vision-frame sizes of B images of original sizes ``image_hws``, with
        each sample's ground-truth ``points`` (original pixels) mapped into the frame when
        ``samples`` carry them."""
        out = []
        for i, (h, w) in enumerate(image_hws):
            frame = tuple(self.vision_backbone.valid_hw((h, w)))
            pts = samples[i].get("points") if samples is not None else None
            if pts is not None:
                pts = [[x * frame[1] / w, y * frame[0] / h] for x, y in pts]
            out.append(ImageGeometry(view_hw=tuple(self.policy.view_size(h, w)), frame_hw=frame,
                                     gt_points=pts))
        return out

    def decode(self, policy_out: PolicyOutput, image_keys: torch.Tensor,
               image_hws: list[tuple[int, int]] | None = None
               ) -> tuple[PriorOutput, dict[str, torch.Tensor]]:
        """Prior and mask logits for B responses over their B image keys.

        ``image_hws`` (the B original image sizes) fills in ``policy_out.geometry`` for priors
        that read pixel coordinates from the text.
        """
        if image_hws is not None and policy_out.geometry is None:
            policy_out.geometry = self.image_geometry(image_hws)
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
                       responses: list[str] | None = None, max_new_tokens: int | None = None,
                       response_prefixes: list[str] | None = None, engine=None
                       ) -> list[SegmentationResult]:
        """Segment B (image, instruction) pairs.

        Args:
            images: B RGB uint8 arrays (H x W x 3), any sizes.
            instructions: B instructions.
            responses: optional B responses to teacher-force instead of generating (the
                "gold reasoning" evaluation mode).
            max_new_tokens: response budget for greedy generation.
            response_prefixes: optional B texts each generated response must begin with (the
                policy writes the rest; e.g. part of a gold reasoning, to see where the policy's
                own reasoning goes wrong).
            engine: a greedy :class:`~coprs.rollout.BaseRolloutEngine` that writes the
                responses instead of ``policy.generate`` (``coprs test --vllm``).

        Returns:
            B :class:`SegmentationResult` at the original image sizes.
        """
        pil = [Image.fromarray(im) for im in images]
        if responses is not None and response_prefixes is not None:
            raise ValueError("predict_images: pass responses (teacher-forced) or "
                             "response_prefixes (generated after a forced start), not both")
        if responses is None and engine is not None:
            if response_prefixes is not None:
                raise ValueError("predict_images: response_prefixes need the policy's own "
                                 "generate, not a generation engine")
            rollouts = [g[0] for g in engine.generate(self.policy, pil, instructions, 1)]
        elif responses is None:
            extra = {} if response_prefixes is None else {"prefixes": response_prefixes}
            rollouts = [g[0] for g in self.policy.generate(pil, instructions,
                                                           max_new_tokens=max_new_tokens,
                                                           **extra)]
        else:
            rollouts = self.rollouts_from_text(responses)
        policy_out = self.policy.readout(pil, instructions, rollouts)
        keys, valid = self.encode_images(images)
        prior, dec = self.decode(policy_out, keys, [im.shape[:2] for im in images])
        results = []
        size = self.vision_backbone.img_size
        for b, (img, rollout) in enumerate(zip(images, rollouts)):
            heatmap, mask = image_maps(prior, dec, b, size, valid[b], img.shape[:2])
            parsed = self.prior.parse_response(rollout.text)
            results.append(SegmentationResult(
                cot=parsed.cot,
                response=rollout.text,
                heatmap=heatmap,
                mask=mask,
                format_ok=bool(parsed.valid and policy_out.has_token[b] and prior.valid[b]),
            ))
        return results

    # ---------------------------------------------------------------- training
    def vision_targets(self, samples: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
        """Ground truth and valid region in the padded vision frame, from ``ResizePadVision``.

        Returns:
            (gt B x S x S float, valid B x S x S float; 1 inside the unpadded image, and 0 on
            ignore pixels).
        """
        size = self.vision_backbone.img_size
        gts, valids = [], []
        for s in samples:
            if "vision_gt_mask" not in s:
                raise KeyError("training samples need 'vision_gt_mask' and 'valid_hw': add "
                               f"dict(type='ResizePadVision', size={size}) to the train pipeline")
            gt = torch.as_tensor(np.asarray(s["vision_gt_mask"]), dtype=torch.float32)
            if gt.shape != (size, size):
                raise ValueError(f"vision_gt_mask is {tuple(gt.shape)} but the backbone takes "
                                 f"{size}x{size}: set ResizePadVision(size={size})")
            valid = torch.zeros(size, size)
            valid[: s["valid_hw"][0], : s["valid_hw"][1]] = 1
            if s.get("vision_ignore_mask") is not None:
                valid[torch.as_tensor(np.asarray(s["vision_ignore_mask"]))] = 0
            gts.append(gt)
            valids.append(valid)
        device = self.vision_backbone.pixel_mean.device
        return torch.stack(gts).to(device), torch.stack(valids).to(device)

    def rollouts_for_training(self, samples: list[dict]) -> tuple[list[Rollout], int]:
        """Rollouts of a batch: the sampled groups (GRPO, ``samples[i]['rollouts']``) or the
        teacher-forced responses followed by end-of-turn (``samples[i]['response']``)."""
        if "rollouts" in samples[0]:
            g = len(samples[0]["rollouts"])
            return [r for s in samples for r in s["rollouts"]], g
        # the target ends where a generated response would: at the special token when the
        # policy stops there (anything after it, e.g. LISA's ".", is cut), else with the
        # end-of-turn token
        texts = [s["response"] for s in samples]
        stop = self.policy.special_token
        if self.policy.stop_at_special_token:
            texts = [t[: t.index(stop) + len(stop)] if stop and stop in t else t for t in texts]
            return self.rollouts_from_text(texts), 1
        tok = self.policy.tokenizer
        end = (tok.convert_tokens_to_ids("<|im_end|>") if "<|im_end|>" in tok.get_vocab()
               else self.policy.eos_token_ids[0])
        return [Rollout(text=r.text, token_ids=[*r.token_ids, end])
                for r in self.rollouts_from_text(texts)], 1

    def loss(self, images: list[np.ndarray], samples: list[dict]) -> dict[str, torch.Tensor]:
        """One joint objective (paper Eq. 4) for a batch.

        GRPO steps (samples carry ``rollouts``, ``advantages`` and optionally ``ref_logprobs``):
        the PPO-clipped policy loss on every rollout's tokens + β·KL to the reference + λ_SEG ·
        L_SEG on every rollout's mask. Supervised steps (samples carry ``response``): token
        cross-entropy on the response + λ_SEG · L_SEG. One backward covers both.
        """
        from ..rl.grpo import agg_loss, kl_penalty, policy_loss

        rollouts, g = self.rollouts_for_training(samples)
        pil = [Image.fromarray(im) for im in images]
        instructions = repeat_each([s["instruction"] for s in samples], g)
        fwd = self.policy.forward_responses(repeat_each(pil, g), instructions, rollouts)
        grpo = "rollouts" in samples[0]
        if grpo:
            logp, mask, entropy = self.policy.response_logprobs(
                fwd, with_entropy=True, entropy_grad=self.rl["entropy_coef"] > 0)
        else:
            logp, mask = self.policy.response_logprobs(fwd)
        keys, _ = self.encode_images(images)
        keys = keys.repeat_interleave(g, 0)
        policy_out = fwd.policy_output([r.text for r in rollouts])
        prior, dec = self.decode(policy_out, keys, repeat_each([im.shape[:2] for im in images], g))
        gt, valid = self.vision_targets(samples)
        seg = self.seg_loss(prior.dense, dec["mask_logits"], gt.repeat_interleave(g, 0),
                            valid.repeat_interleave(g, 0))
        losses = {k: v if k.startswith("loss") else v.detach() for k, v in seg.items()}
        losses["format_ok"] = torch.tensor(float(np.mean(prior.valid)))
        if not grpo:
            ce = -(logp * mask).sum() / mask.sum().clamp(min=1)
            losses["loss_lm"] = self.rl["lm_coef"] * ce
            if self.rl["answer_coef"] > 0:
                losses["loss_answer"] = self.rl["answer_coef"] * self.answer_loss(
                    policy_out.hidden, fwd.lm_head, samples)
            return losses
        if self.rl["old_logprobs"] == "actor":
            # one optimiser step per batch: the policy that sampled is the actor, so its own
            # log-probs (detached) are the old ones, free of the rollout engine's numerics
            # (bf16 kernels, vLLM); the ratio is exactly 1 and the gradient A * grad log p
            old = logp.detach()
        else:
            old = torch.zeros_like(logp)
            for i, r in enumerate(rollouts):
                if r.logprobs is None:
                    raise ValueError("GRPO rollouts need sampling log-probs (Rollout.logprobs)")
                old[i, : len(r.logprobs)] = torch.tensor(r.logprobs, device=logp.device)
        adv = torch.cat([torch.as_tensor(s["advantages"], dtype=torch.float32)
                         for s in samples]).to(logp.device)
        pg, stats = policy_loss(logp, old, adv, mask, clip_eps=self.rl["clip_eps"],
                                agg=self.rl["agg"])
        losses["loss_pg"] = pg
        losses.update({f"pg/{k}": torch.tensor(float(v)) for k, v in stats.items()})
        if self.rl["entropy_coef"] > 0:
            ent = agg_loss(entropy, mask, self.rl["agg"])
            losses["loss_entropy"] = -self.rl["entropy_coef"] * ent
            losses["pg/entropy"] = ent.detach()
        else:
            losses["pg/entropy"] = agg_loss(entropy, mask, self.rl["agg"])
        if self.rl["kl_coef"] > 0 and samples[0].get("ref_logprobs") is not None:
            ref = torch.zeros_like(logp)
            for i, lp in enumerate(x for s in samples for x in s["ref_logprobs"]):
                ref[i, : len(lp)] = torch.as_tensor(lp, device=logp.device)
            kl = agg_loss(kl_penalty(logp, ref, self.rl["kl_kind"]), mask, self.rl["agg"])
            losses["loss_kl"] = self.rl["kl_coef"] * kl
            losses["kl_ref"] = kl.detach()
        return losses

    def answer_loss(self, hidden: torch.Tensor, lm_head: nn.Module, samples: list[dict]
                    ) -> torch.Tensor:
        """Answer naming: the special token's hidden state, read through the policy's LM head,
        should give high probability to every word of the sample's ``gold_answer`` (the field
        ``rl.answer_key`` names).

        The cross-entropy of each content token of the answer ("the purple triangle" → the
        tokens of "purple" and "triangle"; articles are skipped) is averaged per sample, then
        over the samples that have one (0 with a gradient when none has). Not in
        the paper: a pretrained policy's state already names what it reasons about, a
        random-initialised one's does not, and the heatmap prior cannot use a query that does
        not differ between targets.

        Args:
            hidden: B x D special-token hidden states (``e_conc``).
            lm_head: the policy's output projection.
            samples: B data samples.
        """
        tok = self.policy.tokenizer
        key = self.rl["answer_key"]
        batch = WHOLE_BATCH.get() or samples  # a micro-batch part: the batch it belongs to
        if batch and not any(key in sample for sample in batch):
            warnings.warn(f"model.rl.answer_key={key!r}: no sample in the batch has this field, so "
                          "the answer-naming loss is 0; name a field the dataset provides "
                          "(e.g. 'gold_answer') or set model.rl.answer_coef=0", stacklevel=2)
        logp = torch.log_softmax(lm_head(hidden).float(), dim=-1)
        terms = []
        for b, sample in enumerate(samples):
            ids = answer_token_ids(tok, sample.get(key))
            if ids:
                terms.append(-logp[b, ids].mean())
        return torch.stack(terms).mean() if terms else logp.sum() * 0.0

    @torch.no_grad()
    def decode_rollouts(self, images: list[np.ndarray], samples: list[dict],
                        rollouts: list[Rollout], g: int
                        ) -> tuple[PriorOutput, dict[str, torch.Tensor]]:
        """No-grad prior and decoder outputs of B·G rollouts (G consecutive ones per sample)."""
        pil = [Image.fromarray(im) for im in images]
        instructions = repeat_each([s["instruction"] for s in samples], g)
        out = self.policy.readout(repeat_each(pil, g), instructions, rollouts)
        keys, _ = self.encode_images(images)
        return self.decode(out, keys.repeat_interleave(g, 0),
                           repeat_each([im.shape[:2] for im in images], g))

    @torch.no_grad()
    def score_rollouts(self, images: list[np.ndarray], samples: list[dict],
                       rollouts: list[Rollout], g: int) -> torch.Tensor:
        """No-grad decode of every rollout's mask: N x m x m probabilities (N = B·G)."""
        _, dec = self.decode_rollouts(images, samples, rollouts, g)
        return torch.sigmoid(dec["mask_logits"][:, 0].float())

    @torch.no_grad()
    def rollout_maps(self, image: np.ndarray, sample: dict, rollouts: list[Rollout]
                     ) -> list[tuple[np.ndarray, np.ndarray, bool]]:
        """(heatmap, mask, format ok) of each rollout of one sample, at the image's size, as
        :meth:`predict_images` gives them (the heatmap is the sigmoid of the mask logits for
        priors without one)."""
        prior, dec = self.decode_rollouts([image], [sample], rollouts, len(rollouts))
        size, ori = self.vision_backbone.img_size, image.shape[:2]
        valid = self.vision_backbone.valid_hw(ori)
        return [(*image_maps(prior, dec, k, size, valid, ori), bool(prior.valid[k]))
                for k in range(len(rollouts))]

    def loss_normalizers(self, samples: list[dict]) -> dict[str, int]:
        """What each loss of :meth:`loss` is averaged over, counted for a batch of samples.

        ``loss_seg``: images with valid pixels (per-image means); ``loss_lm``: response tokens;
        ``loss_answer``: samples whose answer has content words; ``loss_pg``, ``loss_kl`` and
        ``loss_entropy``: response tokens (``rl.agg='token-mean'``) or sequences with tokens (the
        per-sequence modes); ``_seqs``: sequences. Micro-batches weight their losses by their share of these
        (:func:`coprs.models.micro_batch.split_batch`).
        """
        rollouts, g = self.rollouts_for_training(samples)
        tokens = sum(len(r.token_ids) for r in rollouts)
        out = {"_seqs": len(rollouts), "loss_seg": g * sum(map(_has_valid_pixels, samples))}
        if "rollouts" in samples[0]:
            per = tokens if self.rl["agg"] == "token-mean" else sum(
                1 for r in rollouts if r.token_ids)
            out.update(loss_pg=per, loss_kl=per, loss_entropy=per)
        else:
            tok, key = self.policy.tokenizer, self.rl["answer_key"]
            out["loss_lm"] = tokens
            out["loss_answer"] = sum(1 for s in samples if answer_token_ids(tok, s.get(key)))
        return out

    def train_step(self, data, optim_wrapper, micro_batch: int | None = None
                   ) -> dict[str, torch.Tensor]:
        """mmengine's train step, except that a non-finite loss skips the update (logged as
        ``nonfinite_step``) instead of writing NaN into the weights, and that ``micro_batch``
        sequences at a time are forwarded and back-propagated before one optimiser step
        (:func:`coprs.models.micro_batch.run_train_step`)."""
        from .micro_batch import run_train_step

        return run_train_step(self, self, data, optim_wrapper, micro_batch)

    def forward(self, inputs, data_samples=None, mode: str = "predict"):
        """mmengine entry point.

        ``inputs`` are B RGB arrays and ``data_samples`` B dicts. ``mode='loss'``: the joint
        objective (:meth:`loss`). ``mode='predict'``: B :class:`SegmentationResult` (a
        ``response`` in every sample is teacher-forced instead of generated). ``mode='tensor'``:
        the raw mask logits.
        """
        if mode == "loss":
            return self.loss(list(inputs), list(data_samples))
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
            _, dec = self.decode(self.policy.readout(pil, instructions, rollouts), keys,
                                 [im.shape[:2] for im in inputs])
            return dec["mask_logits"]
        raise ValueError(f"ReasoningSegmentor.forward: unsupported mode {mode!r}; "
                         "use 'loss', 'predict' or 'tensor'")


def _has_valid_pixels(sample: dict) -> bool:
    """Whether a training sample's valid region (``valid_hw`` minus its ignore mask) is not empty."""
    h, w = sample.get("valid_hw", (1, 1))
    if h * w == 0:
        return False
    ignore = sample.get("vision_ignore_mask")
    return ignore is None or not bool(np.asarray(ignore)[:h, :w].all())


#: words an answer-naming target leaves out
ANSWER_SKIP_WORDS = frozenset({"a", "an", "the"})


def answer_token_ids(tokenizer, answer: str | None) -> list[int]:
    """Token ids of the content words of an answer phrase (each word encoded with a leading
    space, as inside a sentence; articles skipped). Empty for a missing or blank answer."""
    ids: list[int] = []
    for word in (answer or "").split():
        if word.lower() not in ANSWER_SKIP_WORDS:
            ids += tokenizer.encode(" " + word, add_special_tokens=False)
    return ids


def apply_update(parsed: torch.Tensor, log_vars: dict, optim_wrapper, nonfinite: bool = False
                 ) -> dict:
    """Back-propagate ``parsed`` and step the optimiser, as mmengine's ``update_params``, unless
    the loss or, after the backward, a gradient is not finite: then the grads are zeroed, the
    weights stay as they were and ``nonfinite_step`` is 1.

    ``nonfinite`` flags an earlier micro-batch of the same step whose loss was not finite. In
    distributed runs every rank must agree, so each flag is all-reduced first (under FSDP each
    rank holds a shard of the gradients). A wrapper with an enabled loss scaler (fp16
    ``AmpOptimWrapper``) keeps its own handling of non-finite gradients: the scaler skips the
    step and lowers its scale. A disabled one (bf16, ``loss_scale=dict(enabled=False)``) is
    checked here like a plain wrapper.
    """
    import time

    if on_any_rank(nonfinite or not bool(torch.isfinite(parsed))):
        optim_wrapper.zero_grad()
        log_vars["nonfinite_step"] = 1.0
        return log_vars
    t0 = time.perf_counter()
    optim_wrapper.backward(optim_wrapper.scale_loss(parsed))
    if optim_wrapper.should_update():  # the last count of gradient accumulation
        scaler = getattr(optim_wrapper, "loss_scaler", None)
        scaling = scaler is not None and scaler.is_enabled()
        if not scaling and on_any_rank(not _grads_finite(optim_wrapper)):
            optim_wrapper.zero_grad()
            log_vars["nonfinite_step"] = 1.0
            return log_vars
        optim_wrapper.step()
        optim_wrapper.zero_grad()
    log_vars["time/backward_step"] = time.perf_counter() - t0
    log_vars["nonfinite_step"] = 0.0
    return log_vars


def _grads_finite(optim_wrapper) -> bool:
    grads = [p.grad for group in optim_wrapper.optimizer.param_groups for p in group["params"]
             if p.grad is not None]
    if not grads:
        return True
    return bool(torch.isfinite(torch.nn.utils.get_total_norm(grads)))  # one foreach pass
