"""Layer-input Hessians H = X Xᵀ over the pruning window, sharded across ranks (EfficientLLM-B).

Which layers: those whose input columns a removal can take (docs/METHOD.md §6):

=========  =========================  ==========================================  ==========
block      input X                    under TP                                    width n
=========  =========================  ==========================================  ==========
``proj``   attention context          split by heads (each rank: its heads' cols)  heads·hd
``fc2``    SwiGLU activation          split by FFN channel                        ffn
``qkv``    input RMSNorm output       replicated on every TP rank                 hidden
``fc1``    pre-MLP RMSNorm output     replicated on every TP rank                 hidden
``output`` final RMSNorm output       replicated (last stage; untied only)        hidden
=========  =========================  ==========================================  ==========

**Where each H lives.** Memory decides: at SmolLM-1.7B one ``fc2`` H is 8192² fp32
(268 MB) and the 24 of them 6.4 GB, so no rank may hold them all. Every block of a
pipeline stage is owned *whole* by exactly one rank of that stage's TP×DP ranks, dealt
round-robin with the big ``fc2`` blocks first; a stage of G = TP·DP ranks and L layers
holds ⌈L/G⌉ ``fc2`` blocks per rank at most. A whole H on one rank keeps the round's
solve a plain dense Cholesky (no distributed factorisation) and the per-step traffic
small: what moves each step is the sampled input rows, not H.

**Each step.** A forward hook on each block's layer samples a fixed set of token
positions from every sequence (`prune.hessian_tokens` per step over the global batch,
spread evenly and shifted by one position per window step: the same tokens whatever the
layout). After the step every rank sends its samples to the blocks' owners in one
`all_to_all` over the stage's TP×DP ranks: for ``proj``/``fc2`` every TP rank sends its
own columns, for the replicated inputs TP rank 0 alone. The owner places the columns at
their full-tensor positions (`pap.sharding.layout` decides which rank holds which) and
adds X_dᵀ X_d for each data-parallel source d. The hooks skip evaluation forwards and the
recomputation inside backward (activation checkpointing), which would count tokens twice.

**Held-out tokens.** A fraction of the sampled positions (`prune.hessian_holdout`) stays out
of H (`HessianWindow.held_mask`: chosen by position index and step only, so the same at any
layout). Senders put each step's held-out rows after the fitted ones; the owner adds the
fitted rows into H and keeps the held-out rows as they are, so that the round can measure
the update's error on tokens it was not fitted to.

The window also keeps ‖Y‖² of each block's output on the fitted and on the held-out tokens
(this rank's share, added over ranks at the round) for the reconstruction errors the round
reports.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import torch
import torch.distributed as dist

from pap.arch import Arch
from pap.pruning.statistics import training_forward
from pap.sharding.full_state import collective_device
from pap.sharding.shard_map import Placements, shard_rows

Key = Tuple[str, int]
"""(block kind, global layer index; -1 for the output layer)."""
SPLIT_INPUT = ("proj", "fc2")
OUTPUT_LAYER = -1


def block_width(arch: Arch, key: Key) -> int:
    """Input width n of a block's layer (full, TP=1)."""
    kind, layer = key
    if kind == "proj":
        return arch.num_heads(layer) * arch.head_dim
    if kind == "fc2":
        return arch.ffn[layer]
    return arch.hidden_size


def param_name(key: Key) -> str:
    """Global name of a block's weight."""
    kind, layer = key
    if layer == OUTPUT_LAYER:
        return "output_layer.weight"
    leaf = {"proj": "self_attention.linear_proj", "qkv": "self_attention.linear_qkv",
            "fc2": "mlp.linear_fc2", "fc1": "mlp.linear_fc1"}[kind]
    return f"decoder.layers.{layer}.{leaf}.weight"


def input_columns(arch: Arch, key: Key, placements: Placements, tp_rank: int) -> torch.Tensor:
    """Full-tensor input columns that TP rank `tp_rank` holds of block `key` (all of them for
    replicated inputs): the shard placement the round and the checkpoints use."""
    width = block_width(arch, key)
    if key[0] not in SPLIT_INPUT:
        return torch.arange(width)
    return shard_rows(param_name(key), width, placements, tp_rank)


def module_of(model, key: Key):
    """The linear layer of a block in this stage's `model` (a megatron GPTModel)."""
    kind, layer = key
    if kind == "output":
        return model.output_layer
    for candidate in model.decoder.layers:
        if candidate.layer_number - 1 == layer:
            attention, mlp = candidate.self_attention, candidate.mlp
            return {"proj": attention.linear_proj, "qkv": attention.linear_qkv,
                    "fc2": mlp.linear_fc2, "fc1": mlp.linear_fc1}[kind]
    raise KeyError(f"layer {layer} is not on this pipeline stage")


def stage_blocks(model, arch: Arch) -> List[Key]:
    """This stage's blocks in ownership order (``fc2`` first: they are the largest)."""
    layers = [layer.layer_number - 1 for layer in model.decoder.layers]
    return block_keys(layers, getattr(model, "post_process", False), arch.tie_embeddings)


def block_keys(layers: List[int], last_stage: bool, tied: bool) -> List[Key]:
    """The blocks of a stage holding `layers`, in ownership order."""
    keys = [(kind, layer) for kind in ("fc2", "proj", "qkv", "fc1") for layer in layers]
    if last_stage and not tied:
        # A tied output layer is the embedding: an update fitted to the logits would also
        # move every layer's input, so it is left alone (docs/PRUNING.md).
        keys.append(("output", OUTPUT_LAYER))
    return keys


def deal_owners(blocks: List[Key], size: int) -> Dict[Key, int]:
    """Block -> index of its owner among the stage's `size` ranks: round-robin in block order."""
    return {key: i % size for i, key in enumerate(blocks)}


def gemm_input(module, x: torch.Tensor) -> torch.Tensor:
    """The input of `module`'s GEMM for the module input `x`, the same tensor on both layer specs.

    With the local spec `linear_qkv` / `linear_fc1` take the output of a separate norm module,
    so that is `x` itself. Transformer Engine's `LayerNormLinear` fuses the norm in front of
    its GEMM and takes the un-normalised hidden state: the norm is applied here from the
    module's own fields (`normalization`, `eps`, `zero_centered_gamma`, `layer_norm_weight`,
    `layer_norm_bias`), in fp32 and cast back to the activation dtype as the fused kernel
    does, so H is built from what the GEMM multiplies on either spec.
    """
    weight = getattr(module, "layer_norm_weight", None)
    if weight is None:
        return x
    eps = float(getattr(module, "eps", 1e-5))
    gamma = weight.float() + 1.0 if getattr(module, "zero_centered_gamma", False) else weight.float()
    normalization = getattr(module, "normalization", "RMSNorm")
    h = x.float()
    if normalization == "RMSNorm":
        out = h * torch.rsqrt(h.square().mean(-1, keepdim=True) + eps) * gamma
    elif normalization == "LayerNorm":
        centred = h - h.mean(-1, keepdim=True)
        out = centred * torch.rsqrt(centred.square().mean(-1, keepdim=True) + eps) * gamma
    else:
        raise NotImplementedError(f"pap: Hessian hooks do not know the fused norm {normalization!r}")
    bias = getattr(module, "layer_norm_bias", None)
    if bias is not None:
        out = out + bias.float()
    return out.to(x.dtype)


@dataclass
class StageGroup:
    """The TP×DP ranks of this pipeline stage, in the order of their process group."""

    group: object
    ranks: List[int]
    tp_ranks: List[int]
    dp_ranks: List[int]
    me: int

    @classmethod
    def current(cls) -> "StageGroup":
        from megatron.core import parallel_state as ps

        group = ps.get_tensor_and_data_parallel_group()
        ranks = dist.get_process_group_ranks(group)
        mine = torch.tensor([ps.get_tensor_model_parallel_rank(), ps.get_data_parallel_rank()])

        device = collective_device()
        everyone = [torch.empty(2, dtype=torch.long, device=device) for _ in ranks]
        dist.all_gather(everyone, mine.to(device), group=group)
        return cls(group, ranks, [int(t[0]) for t in everyone], [int(t[1]) for t in everyone],
                   ranks.index(dist.get_rank()))

    @property
    def size(self) -> int:
        return len(self.ranks)


class HessianWindow:
    """Sampled layer inputs of the window, accumulated into H on the blocks' owners."""

    def __init__(self, tokens_per_step: int, global_batch: int, seq_length: int, tp: int, dp: int,
                 holdout: float = 0.0):
        if not 0 <= holdout <= 0.5:
            raise ValueError(f"pap: the Hessian hold-out fraction must be in [0, 0.5], got {holdout}")
        self.per_sequence = min(seq_length, max(1, math.ceil(tokens_per_step / global_batch)))
        self.holdout_every = round(1 / holdout) if holdout > 0 else 0
        """Every this many sampled positions one is held out of H (0: none), to measure the
        update's error on tokens it was not fitted to."""
        self.held_positions = 0
        """Held-out positions per sequence sampled over the window (the same on every rank)."""
        self.sequences_per_rank = global_batch // dp
        self.tp = tp
        self.steps = 0
        self.hessians: Dict[Key, torch.Tensor] = {}
        """H of the blocks this rank owns (float64, full width: attention contexts of heads that
        share a KV group are nearly collinear, and their H reaches condition numbers of 1e7,
        past what fp32 sums can resolve)."""
        self.output_square: Dict[Key, torch.Tensor] = {}
        """This rank's share of ‖Y‖² per block on the fitted tokens (float64 scalars)."""
        self.held_out: Dict[Key, torch.Tensor] = {}
        """The held-out input rows of the blocks this rank owns ([rows, n] fp32; the round needs
        only X_h·V from them). At the SmolLM-1.7B recipe's window 4,608 rows: 30% of an
        8192-wide float64 H, about one more H for the 2048-wide ones."""
        self.held_square: Dict[Key, torch.Tensor] = {}
        """This rank's share of ‖Y‖² per block on the held-out tokens."""
        self.blocks: List[Key] = []
        self.owners: Dict[Key, int] = {}
        """Block -> index in `stage.ranks` of its owner."""
        self.stage: Optional[StageGroup] = None
        self.arch: Optional[Arch] = None
        self.columns: Dict[Tuple[Key, int], torch.Tensor] = {}
        """(block, TP rank) -> the full-tensor input columns that rank samples."""
        self._pending: Dict[Key, List[torch.Tensor]] = {}
        self._handles = []
        self._model = None

    # ---- hooks -----------------------------------------------------------------------------
    def attach(self, model, arch: Arch) -> None:
        """Hook this stage's `model` (again after every rebuild) for `arch`'s blocks."""
        if model is self._model and arch is self.arch:
            return
        for handle in self._handles:
            handle.remove()
        self._handles, self._model, self.arch = [], model, arch
        if self.stage is None:
            self.stage = StageGroup.current()
        self.blocks = stage_blocks(model, arch)
        self.owners = deal_owners(self.blocks, self.stage.size)
        # Which columns each TP rank sends, worked out once per shape, not every step.
        placements = Placements(arch, self.tp)
        self.columns = {(key, rank): input_columns(arch, key, placements, rank)
                        for key in self.blocks for rank in range(self.tp)}
        for key in self.blocks:
            self._handles.append(module_of(model, key).register_forward_hook(self._hook(key)))

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles, self._model = [], None

    def _positions(self, length: int) -> torch.Tensor:
        count = self.per_sequence
        return (torch.arange(count) * length // count + self.steps) % length

    def held_mask(self) -> torch.Tensor:
        """Which of the step's `per_sequence` sampled positions are held out of H.

        Position j of every sequence is held out when (j + step) ≡ −1 mod `holdout_every`: it
        depends on neither the sequence nor the rank, so the split is the same at any layout,
        and the shift by the step rotates it, so with one position per sequence whole steps
        are held out in turn."""
        j = torch.arange(self.per_sequence)
        if not self.holdout_every:
            return torch.zeros(self.per_sequence, dtype=torch.bool)
        return (j + self.steps) % self.holdout_every == self.holdout_every - 1

    def _hook(self, key: Key):
        kind = key[0]
        from megatron.core import parallel_state as ps

        def record(module, args, output):
            if not training_forward(module):
                return
            x = args[0].detach()
            where = self._positions(x.shape[0]).to(x.device)
            sample = gemm_input(module, x.index_select(0, where)).float()
            self._pending.setdefault(key, []).append(sample.reshape(-1, sample.shape[-1]))
            y = (output[0] if isinstance(output, tuple) else output).detach().index_select(0, where).float()
            # proj/fc2 outputs are complete (reduced over TP) on every TP rank: count them once.
            if kind not in SPLIT_INPUT or ps.get_tensor_model_parallel_rank() == 0:
                # Kept on the device: a host copy here would synchronise every micro-batch.
                per_position = y.double().square().reshape(y.shape[0], -1).sum(1)
                held = self.held_mask().to(y.device)
                for store, part in ((self.output_square, per_position[~held].sum()),
                                    (self.held_square, per_position[held].sum())):
                    store[key] = store[key] + part if key in store else part

        return record

    # ---- after each optimizer step ---------------------------------------------------------
    @torch.no_grad()
    def end_step(self) -> None:
        """Send this step's samples to the owners and add them into H (collective over the stage)."""

        stage, arch, device = self.stage, self.arch, collective_device()
        rows = self.per_sequence_rows()
        outgoing: List[List[torch.Tensor]] = [[] for _ in range(stage.size)]
        held = self.held_mask()
        fit_rows = int((~held).sum()) * self.sequences_per_rank
        for key in self.blocks:
            pieces = self._pending.pop(key, [])
            if self._sends(key, stage.tp_ranks[stage.me]):
                sample = self._fitted_first(pieces, held)
                expected = rows * len(self.columns[key, stage.tp_ranks[stage.me]])
                if sample.numel() != expected:
                    raise RuntimeError(f"pap: Hessian block {key} sampled {sample.numel()} values this step, "
                                       f"expected {expected} (the step ran an unexpected number of forwards)")
                outgoing[self.owners[key]].append(sample.reshape(-1))
        counts_out = [sum(p.numel() for p in parts) for parts in outgoing]
        counts_in = [0] * stage.size
        mine = [key for key in self.blocks if self.owners[key] == stage.me]
        for source in range(stage.size):
            for key in mine:
                if self._sends(key, stage.tp_ranks[source]):
                    counts_in[source] += rows * len(self.columns[key, stage.tp_ranks[source]])
        flat = [p for parts in outgoing for p in parts]
        send = torch.cat(flat).to(device) if flat else torch.empty(0, device=device)
        received = torch.empty(sum(counts_in), dtype=torch.float32, device=device)
        if stage.size == 1:
            received = send
        else:
            dist.all_to_all_single(received, send, counts_in, counts_out, group=stage.group)
        # Unpack: per source rank, its pieces of my blocks in block order.
        inputs: Dict[Key, Dict[int, torch.Tensor]] = {key: {} for key in mine}
        offset = 0
        for source in range(stage.size):
            dp_rank, tp_rank = stage.dp_ranks[source], stage.tp_ranks[source]
            for key in mine:
                if not self._sends(key, tp_rank):
                    continue
                columns = self.columns[key, tp_rank]
                count = rows * len(columns)
                piece = received[offset:offset + count].view(rows, len(columns))
                offset += count
                full = inputs[key].get(dp_rank)
                if full is None:
                    full = inputs[key][dp_rank] = torch.zeros(rows, block_width(arch, key), device=device)
                full[:, columns.to(device)] = piece
        for key in mine:
            width = block_width(arch, key)
            h = self.hessians.get(key)
            if h is None:
                h = self.hessians[key] = torch.zeros(width, width, dtype=torch.float64, device=device)
            for dp_rank in sorted(inputs[key]):
                x = inputs[key][dp_rank]
                fitted = x[:fit_rows].double()
                h.addmm_(fitted.T, fitted)
                if fit_rows < rows:
                    previous = self.held_out.get(key)
                    rest = x[fit_rows:]
                    self.held_out[key] = rest if previous is None else torch.cat([previous, rest])
        self.held_positions += int(held.sum())
        self.steps += 1

    def _fitted_first(self, pieces: List[torch.Tensor], held: torch.Tensor) -> torch.Tensor:
        """This step's sampled rows of one block, the fitted positions' rows of every
        micro-batch first, then the held-out ones: the owner splits them by count alone."""
        if not pieces:
            return torch.empty(0)
        count = len(held)
        shaped = [p.view(count, -1, p.shape[-1]) for p in pieces]  # [positions, sequences, cols]
        fitted = [p[~held.to(p.device)].reshape(-1, p.shape[-1]) for p in shaped]
        rest = [p[held.to(p.device)].reshape(-1, p.shape[-1]) for p in shaped]
        return torch.cat(fitted + rest)

    def per_sequence_rows(self) -> int:
        """Rows each rank samples per block per step: positions × its sequences of the step."""
        return self.per_sequence * self.sequences_per_rank

    def _sends(self, key: Key, tp_rank: int) -> bool:
        return key[0] in SPLIT_INPUT or tp_rank == 0

    def reset(self) -> None:
        """Start a new window (after a round: the shapes changed)."""
        self.steps = self.held_positions = 0
        self.hessians, self.output_square, self._pending = {}, {}, {}
        self.held_out, self.held_square = {}, {}

    # ---- at the round ----------------------------------------------------------------------
    def output_squares(self) -> Dict[Key, Tuple[float, float]]:
        """(‖Y‖² on the fitted tokens, on the held-out ones) of every block of the stage,
        summed over its ranks (collective over the stage)."""

        device = collective_device()

        def value(store, key):
            return store[key].to(device, torch.float64) if key in store else torch.zeros((), dtype=torch.float64,
                                                                                        device=device)

        values = torch.stack([torch.stack([value(self.output_square, key), value(self.held_square, key)])
                              for key in self.blocks])
        if self.stage.size > 1:
            dist.all_reduce(values, group=self.stage.group)
        return {key: (fit, held) for key, (fit, held) in zip(self.blocks, values.tolist())}

    def owned_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.hessians.values(), *self.held_out.values()))

    # ---- checkpoints -----------------------------------------------------------------------
    def state_dict(self) -> dict:
        """This rank's share: its owned H, its ‖Y‖² shares and the window's step count."""
        return {"steps": self.steps, "hessians": {k: v.cpu() for k, v in self.hessians.items()},
                "output_square": {k: v.cpu() for k, v in self.output_square.items()},
                "held_positions": self.held_positions,
                "held_out": {k: v.cpu() for k, v in self.held_out.items()},
                "held_square": {k: v.cpu() for k, v in self.held_square.items()}}

    def load_state_dict(self, state: dict) -> None:

        device = collective_device()
        self.steps = state["steps"]
        self.hessians = {tuple(k): v.to(device) for k, v in state["hessians"].items()}
        self.output_square = {tuple(k): v.to(device) for k, v in state["output_square"].items()}
        # Checkpoints from before the hold-out have none: the round then reports in-sample errors.
        self.held_positions = state.get("held_positions", 0)
        self.held_out = {tuple(k): v.to(device) for k, v in state.get("held_out", {}).items()}
        self.held_square = {tuple(k): v.to(device) for k, v in state.get("held_square", {}).items()}
