"""Distillation from a frozen teacher as a training component (docs/DISTILL.md).

The component provides the run's forward step (`pap.distill.step`), loads the teacher when
it is first needed and frees it when it is needed no more (`distill.during: pruning` once
the pruning target is reached), and reports `distill/kl` and `distill/ce`. It saves
nothing: the teacher is reloaded from its checkpoint on resume, and whether it teaches
follows from the pruning component's state.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as dist

from pap.callbacks import Callback
from pap.config import DistillConfig
from pap.distill.step import DistillForwardStep
from pap.distill.teacher import Teacher, load_teacher

GIB = 2 ** 30


class Distillation(Callback):
    """Owns the teacher and the distillation forward step."""

    name = "distill"
    priority = -10  # after pruning: whether the next step is taught depends on this step's round

    def __init__(self, cfg: DistillConfig):
        self.cfg = cfg
        self.step = DistillForwardStep(cfg)
        self.last: dict = {}
        """This step's `distill/*` scalars (empty when it was not taught)."""
        self._window = torch.zeros(3, dtype=torch.float64)  # KL sum, CE sum, tokens since the last progress line
        self._released = False

    @property
    def teacher(self) -> Optional[Teacher]:
        return self.step.teacher

    # ---- events ----------------------------------------------------------------------------
    def forward_step(self):
        return self.step

    def setup(self, trainer) -> None:
        self._follow_phase(trainer)

    def on_train_start(self, trainer) -> None:
        if self.teacher is not None:
            trainer.progress.print(self.describe(trainer))
        elif self.cfg.during == "after":
            trainer.progress.print("pap: distill: the teacher loads when the pruning target is reached "
                                   "(distill.during=after)")
        else:
            trainer.progress.print("pap: distill: the pruning target is reached already and distill.during=pruning: "
                                   "training without the teacher")

    def post_step(self, trainer, step) -> None:
        taught = self.step.teaching
        sums = torch.stack(self.step.sums).sum(0) if self.step.sums else torch.zeros(3, dtype=torch.float64)
        self.step.sums = []
        self.last = {}
        if taught:
            from megatron.core import parallel_state as ps  # loaded with the model

            # The last stage's first TP rank of every data-parallel replica holds the sums.
            holder = trainer.topo.is_last_stage and ps.get_tensor_model_parallel_rank() == 0
            total = sums if holder else torch.zeros(3, dtype=torch.float64)
            dist.all_reduce(total)
            self._window += total
            tokens = max(float(total[2]), 1.0)
            self.last = {"distill/kl": float(total[0]) / tokens, "distill/ce": float(total[1]) / tokens}
        self._follow_phase(trainer)

    def scalars(self, trainer) -> dict:
        return dict(self.last)

    def progress_note(self, trainer) -> str:
        kl, ce, tokens = self._window.tolist()
        self._window.zero_()
        return f"kl {kl / tokens:.4f} ce {ce / tokens:.4f}" if tokens else ""

    def extra_flops_per_token(self, trainer) -> int:
        """The teacher's forward (a third of its training FLOPs), on the steps it teaches."""
        if not self.step.teaching:
            return 0
        return self.teacher.arch.flops_per_token(trainer.cfg.data.seq_length) // 3

    # ---- internals -------------------------------------------------------------------------
    def teaches(self, trainer) -> bool:
        """Whether the next step is taught: `distill.during` against the pruning stage."""
        pruning = trainer.callback("pruning")
        in_pruning_stage = pruning is not None and pruning.active(trainer)
        return self.cfg.during == "both" or (self.cfg.during == "pruning") == in_pruning_stage

    def _follow_phase(self, trainer) -> None:
        """Load the teacher when the next step needs it; free it when no later step will."""
        teaching = self.teaches(trainer)
        if teaching and self.teacher is None:
            self.step.teacher = load_teacher(trainer.cfg, trainer.arch, trainer.topo.rank == 0)
            if trainer.progress is not None:  # loaded mid-run (distill.during=after)
                trainer.progress.print(self.describe(trainer))
        # Pruning only ever ends: with during=pruning the teacher is done for good.
        if not teaching and self.teacher is not None and self.cfg.during == "pruning":
            self.step.teacher = None
            if trainer.progress is not None:
                trainer.progress.print("pap: distill: pruning is over (distill.during=pruning): teacher released")
        self.step.teaching = teaching

    def describe(self, trainer) -> str:
        """The start line: the teacher, what it costs this rank in memory, and the loss."""
        teacher, cfg = self.teacher, trainer.cfg
        tokens = cfg.train.micro_batch_size * cfg.data.seq_length
        local_vocab = teacher.arch.padded_vocab_size // trainer.topo.tp
        element = next(teacher.module.parameters()).element_size()
        # last stage, per micro batch: the teacher's logits (its dtype), and the fp32 target
        # and student softmax that the KL keeps for backward
        logits = tokens * local_vocab * (element + 8) if trainer.topo.is_last_stage else 0
        top_k = f"top-{self.cfg.top_k}" if self.cfg.top_k else "whole vocabulary"
        return (f"pap: distill: teacher {teacher.path} ({teacher.arch.num_params():,} parameters): "
                f"{teacher.weight_bytes() / GIB:.3f} GiB of weights on rank {trainer.topo.rank}"
                + (f", {logits / GIB:.3f} GiB of logits per micro batch" if logits else "")
                + f"; loss {self.cfg.alpha:g} * T^2 * KL + {1 - self.cfg.alpha:g} * CE at T={self.cfg.temperature:g} "
                f"({top_k}), during {self.cfg.during}")
