"""Forward + backward of the LoRA policy's trained token rows: coprs's layer against peft's.

Under LoRA the rows of ``<think>``, ``</think>`` and ``<REF_POS>`` in ``embed_tokens`` and
``lm_head`` train (``model.policy.lora.trainable_tokens``, ``coprs/policies/adapters.py``).
peft's ``TrainableTokensLayer`` builds ``weight.index_copy(rows, trained)`` at every forward: a
full copy of the matrix, and for the head a full weight gradient in the backward. coprs's
subclass looks the base rows up and replaces the trained ones (embedding), or computes the base
logits and replaces the trained columns (head), which gives the same outputs and gradients.

Both sides run the same step on the same matrices (Qwen2.5-VL-7B's vocabulary and width by
default, float32 on CPU): the embedding of a sequence that holds the three tokens, the head's
log-softmax over it, and the backward to the rows and to the hidden states (as in training,
where the hidden states come from trained layers). Sides alternate; the script reports the
median seconds of each and the ratio, and checks that both give the same loss and row gradients.

Prints one JSON object last::

    PYTHONPATH=. python tools/benchmarks/token_rows.py --threads 2
    {"peft_over_coprs": 1.9, "same_result": true, ...}
"""

from __future__ import annotations

import sys

import torch
from _common import base_parser, configured, emit, interleaved, machine, median
from torch import nn


def _layers(vocab: int, hidden: int):
    from peft.tuners.trainable_tokens import TrainableTokensLayer

    from coprs.policies.adapters import add_token_rows

    class Model(nn.Module):  # the two matrices as transformers names them, untied (7B)
        def __init__(self):
            super().__init__()
            self.embed_tokens = nn.Embedding(vocab, hidden)
            self.lm_head = nn.Linear(hidden, vocab, bias=False)

        def get_input_embeddings(self):
            return self.embed_tokens

        def get_output_embeddings(self):
            return self.lm_head

    torch.manual_seed(0)
    model = Model().requires_grad_(False)
    rows = [vocab - 3, vocab - 2, vocab - 1]
    add_token_rows(model, rows, ("default",))
    with torch.no_grad():
        for layer in (model.embed_tokens, model.lm_head):
            layer.trainable_tokens_delta["default"].normal_(0, 0.02)
    return model, rows, TrainableTokensLayer


def main(argv=None) -> dict:
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--vocab", type=int, default=152064)
    p.add_argument("--hidden", type=int, default=3584)
    p.add_argument("--tokens", type=int, default=64, help="sequence length")
    args = p.parse_args(argv)
    if args.quick:
        args.vocab, args.hidden, args.tokens = 512, 32, 8
    repeats = args.repeats or (2 if args.quick else 7)
    with configured(args):
        model, rows, peft_layer = _layers(args.vocab, args.hidden)
        ids = torch.randint(0, args.vocab - 3, (1, args.tokens))
        ids[0, :3] = torch.tensor(rows)  # the three tokens in the sequence
        mix = torch.randn(args.hidden, args.hidden) / args.hidden ** 0.5

        def step(peft: bool):
            deltas = [model.embed_tokens.trainable_tokens_delta["default"],
                      model.lm_head.trainable_tokens_delta["default"]]
            for d in deltas:
                d.grad = None
            fwd = ((lambda layer, x: peft_layer.forward_adapters(layer, x, ["default"])) if peft
                   else (lambda layer, x: layer(x)))
            hidden = fwd(model.embed_tokens, ids) @ mix
            loss = -torch.log_softmax(fwd(model.lm_head, hidden), -1)[0, :, rows[-1]].mean()
            loss.backward()
            return loss.detach(), [d.grad.clone() for d in deltas]

        ours, theirs = step(False), step(True)
        same = bool(torch.allclose(ours[0], theirs[0], rtol=1e-5, atol=1e-6) and all(
            torch.allclose(a, b, rtol=1e-4, atol=1e-6) for a, b in zip(ours[1], theirs[1])))
        times = interleaved({"coprs": lambda: step(False), "peft": lambda: step(True)}, repeats)
    seconds = {k: median(v) for k, v in times.items()}
    return emit(dict(
        benchmark="token_rows", quick=bool(args.quick), machine=machine(),
        vocab=args.vocab, hidden=args.hidden, tokens=args.tokens, repeats=repeats,
        seconds=seconds, peft_over_coprs=seconds["peft"] / seconds["coprs"],
        same_result=same,
        # what peft's layer allocates besides the outputs, in float32: its copy of each matrix
        # and each matrix's full weight gradient (coprs's: none)
        peft_extra_mib=4 * args.vocab * args.hidden * 4 / 2 ** 20))


if __name__ == "__main__":
    main(sys.argv[1:])
