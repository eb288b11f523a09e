"""The teacher: a frozen megatron-core model stage in the student's TP/PP layout.

The teacher keeps its own shapes (it is never pruned), is built in the student's dtype,
runs forward only under `torch.no_grad`, and has no gradients, DDP buffers or optimizer
state. It is loaded from its pap checkpoint at every start and resume (never saved).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pap import checkpoint
from pap.arch import Arch
from pap.config import PapConfig
from pap.errors import PapError

# Settings the teacher's weights depend on that Arch does not record: the student's config
# builds the teacher, so they must agree (the vocabulary also lines the two softmaxes up).
_SHARED_MODEL_KEYS = ("vocab_size", "rope_theta", "norm_eps")


@dataclass
class Teacher:
    """This rank's teacher stage and what it is."""

    module: torch.nn.Module
    arch: Arch
    path: str

    @property
    def hidden_size(self) -> int:
        return self.arch.hidden_size

    def weight_bytes(self) -> int:
        """Bytes of this rank's teacher weights."""
        return sum(p.numel() * p.element_size() for p in self.module.parameters())


def teacher_path(cfg: PapConfig) -> str:
    """`distill.teacher`, else `checkpoint.init_from`."""
    return cfg.distill.teacher or cfg.checkpoint.init_from


def load_teacher(cfg: PapConfig, student_arch: Arch, is_rank0: bool) -> Teacher:
    """Build this rank's teacher stage and load its checkpoint (collective)."""
    from pap.model import build_model  # megatron-core: loaded to build a model

    path = teacher_path(cfg)
    source = checkpoint.read(path)
    problem = checkpoint.verify(source.path) if is_rank0 else None
    if problem:
        raise PapError(f"distill.teacher: {problem}")
    mismatch = source.setting_mismatch(cfg.model, _SHARED_MODEL_KEYS)
    if mismatch:
        key, saved, configured = mismatch
        raise PapError(f"distill.teacher {source.path}: model.{key} is {saved!r} there but "
                       f"{configured!r} in the config; the teacher and the student must share it")
    if source.arch.padded_vocab_size != student_arch.padded_vocab_size:
        raise PapError(f"distill.teacher {source.path}: its vocabulary ({source.arch.padded_vocab_size} padded) "
                       f"differs from the student's ({student_arch.padded_vocab_size}); a teacher must share the "
                       f"student's tokenizer")
    if source.arch.num_layers % cfg.parallel.pp:
        raise PapError(f"distill.teacher {source.path}: its {source.arch.num_layers} layers do not split into "
                       f"parallel.pp={cfg.parallel.pp} stages; the teacher runs in the student's pipeline stages")
    module = build_model(source.arch, cfg, draw=False)
    checkpoint.load_model(source, module)
    module.eval()
    module.requires_grad_(False)
    return Teacher(module, source.arch, str(source.path))
