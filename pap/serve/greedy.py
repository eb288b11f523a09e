"""Greedy continuations with the log-probability of each chosen token, from `transformers`
on an export and from megatron-core on the pap checkpoint itself (fp32, one process).

Both recompute the whole sequence at every step (no cache): these are references, for
few short prompts, not fast decoders.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Sequence

import torch


@dataclass
class Continuation:
    tokens: List[int]
    logprobs: List[float]


def _greedy(logits_of: Callable[[torch.Tensor], torch.Tensor], prompt: Sequence[int], steps: int,
            vocab_size: int) -> Continuation:
    ids = torch.tensor([list(prompt)])
    tokens, logprobs = [], []
    with torch.no_grad():
        for _ in range(steps):
            last = logits_of(ids)[0, -1, :vocab_size].double().log_softmax(-1)
            token = int(last.argmax())
            tokens.append(token)
            logprobs.append(float(last[token]))
            ids = torch.cat([ids, torch.tensor([[token]])], dim=1)
    return Continuation(tokens, logprobs)


def transformers_greedy(export_dir: str, prompts: Sequence[Sequence[int]], steps: int) -> List[Continuation]:
    """`transformers` on the export (remote code trusted when the config names any)."""
    import json
    from pathlib import Path

    from transformers import AutoModelForCausalLM

    config = json.loads((Path(export_dir) / "config.json").read_text())
    model = AutoModelForCausalLM.from_pretrained(export_dir, trust_remote_code="auto_map" in config,
                                                 dtype=torch.float32)
    model.eval()
    return [_greedy(lambda ids: model(ids).logits, prompt, steps, config["vocab_size"]) for prompt in prompts]


def pap_greedy(ckpt: str, prompts: Sequence[Sequence[int]], steps: int) -> List[Continuation]:
    """pap's megatron-core model of checkpoint `ckpt`, at TP=1, PP=1, in fp32."""
    from pap import checkpoint
    from pap.distributed import init_distributed
    from pap.eval.loss import model_settings
    from pap.model import build_model

    source = checkpoint.read(ckpt)
    longest = max(len(p) for p in prompts) + steps
    init_distributed(1, 1, 1234)
    model = build_model(source.arch, model_settings(source, 1, 1, longest), draw=False)
    checkpoint.load_model(source, model)
    model.eval()

    def logits_of(ids):
        positions = torch.arange(ids.shape[1]).unsqueeze(0)
        return model(ids, positions, None)

    return [_greedy(logits_of, prompt, steps, source.arch.vocab_size) for prompt in prompts]
