"""Validation loss and perplexity of a pap checkpoint on Megatron `.bin/.idx` data.

    python -m pap.eval loss --ckpt runs/tiny_pap --data data/embedded/stdlib_text_document --tokens 65536
    torchrun --nproc-per-node 4 -m pap.eval loss --ckpt runs/tiny_pap --data ... --tp 2 --pp 2

Samples come from megatron-core's `GPTDataset` with a fixed seed, built identically in every
process before the process group exists, so every layout (TP, PP, DP) sees the same
samples. The loss is the mean next-token cross-entropy over the tokenizer's vocabulary: the
embedding's padding rows are left out, so it is exactly what `transformers` computes on the
model's export (training's `lm loss validation` includes them and can be slightly higher).
"""

from __future__ import annotations

import dataclasses
import math
import os
import tempfile
from dataclasses import dataclass
from typing import List, Optional, Sequence

import torch

from data_prep.index import validate_pair
from pap import checkpoint
from pap.config import ConfigError, DataConfig, ModelConfig, PapConfig, ParallelConfig, parse_blend
from pap.data import TokenizerInfo, check_samples_fit, dataset_vocabulary, require_dataset
from pap.errors import PapError

DEFAULT_SPLIT = "0,1,0"  # every document of the data is evaluation data


@dataclass
class LossResult:
    """Mean next-token loss (nats) over `tokens` scored tokens of `samples` samples."""

    loss: float
    tokens: int
    samples: int

    @property
    def perplexity(self) -> float:
        return math.exp(self.loss)


def check_data(prefixes: Sequence[str], vocab_size: int, ckpt: str) -> None:
    """One error line for a missing or inconsistent dataset, or token ids the model cannot embed."""
    for prefix in prefixes:
        require_dataset(prefix, "--data")
        validate_pair(prefix)
        needed = dataset_vocabulary(prefix)
        if needed is not None and needed.size > vocab_size:
            raise PapError(f"--data {prefix}: {needed.evidence} but the model of "
                           f"{ckpt} has vocab_size {vocab_size}; evaluate on data tokenized with the model's "
                           f"own tokenizer")


def build_samples(prefixes: List[str], weights: Optional[List[float]], count: int, seq_length: int,
                  vocab_size: int, split: str, seed: int):
    """The first `count` samples of the evaluation split, in megatron's seeded order.

    Call before the process group exists: every process then builds the same index
    itself (into its own scratch cache), with no rank waiting on another's files.
    """
    from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
    from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig

    with tempfile.TemporaryDirectory(prefix="pap-eval-cache-") as cache:
        config = GPTDatasetConfig(
            random_seed=seed, sequence_length=seq_length, blend=(prefixes, weights), split=split,
            path_to_cache=cache, tokenizer=TokenizerInfo(vocab_size), reset_position_ids=False,
            reset_attention_mask=False, eod_mask_loss=False, create_attention_mask=False)
        _, valid, _ = BlendedMegatronDatasetBuilder(GPTDataset, [0, count, 0], lambda: True, config).build()
        if valid is None:
            raise PapError(f"--split {split}: leaves no evaluation data (the second part must be positive)")
        # Read everything while the cache exists; `count` is a modest number of samples.
        return [{k: torch.as_tensor(v) for k, v in valid[i].items()} for i in range(count)]


def model_settings(source, tp: int, pp: int, seq_length: int):
    """The PapConfig to rebuild the checkpoint's model at (tp, pp), in fp32."""
    known = {f.name for f in dataclasses.fields(ModelConfig)}
    model = ModelConfig(**{k: v for k, v in source.config.get("model", {}).items() if k in known})
    model.params_dtype = "fp32"  # a bf16 run's fp32 masters load as they are
    return PapConfig(model=model, parallel=ParallelConfig(tp=tp, pp=pp),
                     data=DataConfig(blend=["-"], seq_length=seq_length))


def evaluate(ckpt: str, data: Sequence[str], tokens: int = 65536, tp: int = 1, pp: int = 1,
             seq_length: Optional[int] = None, micro_batch_size: int = 4, split: str = DEFAULT_SPLIT,
             seed: int = 1234, report=print) -> LossResult:
    """Loss of checkpoint `ckpt` on the first `tokens` tokens (whole samples) of `data`
    (a prefix, or a Megatron blend `[w1, prefix1, w2, prefix2, ...]`), at TP=tp, PP=pp and
    data parallelism over the remaining processes. Collective; every rank gets the result.
    """
    if tp < 1 or pp < 1 or micro_batch_size < 1 or tokens < 1:
        raise PapError("--tp, --pp, --micro-batch-size and --tokens must be positive")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world % (tp * pp):
        raise PapError(f"--tp {tp} --pp {pp}: {world} processes are not a multiple of tp * pp = {tp * pp}; "
                       f"launch with torchrun --nproc-per-node {tp * pp}")
    source = checkpoint.read_verified(ckpt, "--no-verify", report)
    arch = source.arch
    if arch.num_layers % pp:
        raise PapError(f"--pp {pp}: does not divide the {arch.num_layers} layers of {ckpt}")
    try:
        prefixes, weights = parse_blend(list(data), source="--data")
    except ConfigError as exc:
        raise PapError(str(exc).replace("data.blend", "the blend")) from None
    check_data(prefixes, arch.vocab_size, ckpt)
    seq_length = seq_length or int(source.config.get("data", {}).get("seq_length", 0)) or 2048
    for prefix in prefixes:
        check_samples_fit(prefix, seq_length, split, (1,), "--data",
                          "use a larger corpus, a smaller --seq-length or another --split")
    count = max(1, -(-tokens // seq_length))
    samples = build_samples(prefixes, weights, count, seq_length, arch.vocab_size, split, seed)

    # megatron-core (heavy) only once the arguments and the data have been checked.
    from pap.distributed import init_distributed
    from pap.model import build_model

    topo = init_distributed(tp, pp, seed)
    model = build_model(arch, model_settings(source, tp, pp, seq_length), draw=False)
    checkpoint.load_model(source, model)
    model.eval()
    report(f"pap.eval loss: {ckpt} ({arch.num_params():,} parameters) at tp={tp} pp={pp} dp={topo.dp}: "
           f"{count} samples of {seq_length} tokens from {' '.join(map(str, data))}")
    total = _score(model, samples, micro_batch_size, seq_length, arch.vocab_size, topo)
    return LossResult(loss=float(total[0] / total[1]), tokens=int(total[1]), samples=count)


def _score(model, samples, micro_batch_size: int, seq_length: int, vocab_size: int, topo) -> torch.Tensor:
    """[summed loss, scored tokens] over all samples, on every rank (float64)."""
    import torch.distributed as dist
    from megatron.core import parallel_state as ps
    from megatron.core import tensor_parallel
    from megatron.core.pipeline_parallel import get_forward_backward_func

    device = next(model.parameters()).device
    model.config.batch_p2p_sync = False
    total = torch.zeros(2, dtype=torch.float64)
    holder = topo.is_last_stage and ps.get_tensor_model_parallel_rank() == 0
    batches = [samples[i:i + micro_batch_size] for i in range(0, len(samples), micro_batch_size)]
    for batch_index in range(topo.dp_rank, len(batches), topo.dp):  # DP replicas share the batches out
        batch = {k: torch.stack([s[k] for s in batches[batch_index]]).to(device)
                 for k in ("tokens", "labels", "loss_mask", "position_ids")}

        def loss_func(output, batch=batch):
            # Gather the vocab-parallel logits and drop the padding rows: the loss is over
            # the tokenizer's vocabulary, as the exported model computes it.
            logits = tensor_parallel.gather_from_tensor_model_parallel_region(output)[..., :vocab_size]
            per_token = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1),
                                                          batch["labels"].flatten(), reduction="none")
            mask = batch["loss_mask"].flatten().float()
            if holder:
                total[0] += float((per_token * mask).double().sum())
                total[1] += float(mask.double().sum())
            return output.sum() * 0, {}

        def forward_step(_, stage, batch=batch):
            return stage(batch["tokens"], batch["position_ids"], None), loss_func

        with torch.no_grad():
            get_forward_backward_func()(forward_step_func=forward_step, data_iterator=iter([None]), model=[model],
                                        num_microbatches=1, seq_length=seq_length,
                                        micro_batch_size=batch["tokens"].shape[0], forward_only=True)
    dist.all_reduce(total)
    return total
