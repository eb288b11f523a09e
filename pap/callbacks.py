"""The trainer's extension surface: events a component listens to, and what a step reports.

`pap.trainer.Trainer` runs steps, schedules, logging, validation and checkpoints, and
nothing else. A feature that needs more (pruning, statistics windows, benchmarks during
training) is a `Callback`: it is handed the trainer at each event, owns its own state, and
saves and restores that state through the trainer's checkpoints. The events, in the order
a run meets them:

==================  ==================================================================
`setup`             the model and optimizer exist and a resume has been loaded
`restore`           resuming at iteration > 0: this rank's saved state (or None) and the
                    checkpoint directory (for state saved in layout-free form)
`on_train_start`    `Trainer.run` starts; `trainer.progress` prints and logs
`post_backward`     gradients are reduced, before the optimizer step
`post_step`         after the optimizer step (may change the model: `Trainer.rebuild`)
`scalars`           this step's TensorBoard scalars (merged into the trainer's)
`progress_note`     text appended to the periodic progress line
`on_step_logged`    after the step's logging and interval validation, before the
                    interval checkpoint
`on_step_end`       after the interval checkpoint, before an exit request is honoured
`state_dict`        this rank's state, saved in every checkpoint (None: nothing to save)
`write_checkpoint`  extra files written into a checkpoint directory before it is final
==================  ==================================================================

Two questions the trainer asks its components: `forward_step()`, the forward step and loss
of a component that changes the objective (distillation; at most one component gives one),
and `extra_flops_per_token()`, work a component adds to each step's FLOPs (a teacher's
forward), counted in the throughput and MFU. A forward step can also be injected directly
(`Trainer(..., forward_step=...)`, `pap.forward_step`), in the manner of megatron-core's
`forward_step_func`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional

if TYPE_CHECKING:  # annotations only: the trainer imports this module
    from pap.trainer import Trainer


@dataclass
class StepResult:
    """What one optimizer step reports (loss averaged over the global batch)."""

    loss: float
    grad_norm: float
    lr: float
    seconds: float
    skipped: bool


class Callback:
    """A component of a training run. Every event is optional; the defaults do nothing.

    `name` keys the component's state in checkpoints and lets code find it
    (`Trainer.callback(name)`); `priority` orders components (higher runs first, ties in
    the order given).
    """

    name = "callback"
    priority = 0

    def setup(self, trainer: "Trainer") -> None:
        """The model and optimizer exist (and a resume's weights are loaded)."""

    def restore(self, trainer: "Trainer", saved: Optional[dict], checkpoint_dir: Path) -> None:
        """Resuming at `trainer.iteration` > 0 from `checkpoint_dir`: `saved` is this rank's
        own `state_dict` from it when the layout maps onto the saved one, else None."""

    def on_train_start(self, trainer: "Trainer") -> None:
        """`Trainer.run` begins (after its start line)."""

    def post_backward(self, trainer: "Trainer") -> None:
        """Gradients of this step are reduced; the optimizer has not stepped."""

    def post_step(self, trainer: "Trainer", step: StepResult) -> None:
        """The optimizer stepped; `trainer.iteration` counts this step."""

    def scalars(self, trainer: "Trainer") -> dict:
        """TensorBoard scalars of this step."""
        return {}

    def progress_note(self, trainer: "Trainer") -> str:
        """Text for the periodic progress line ('' for none)."""
        return ""

    def on_step_logged(self, trainer: "Trainer") -> None:
        """The step is logged (and validated at the interval); before the interval checkpoint."""

    def on_step_end(self, trainer: "Trainer") -> None:
        """The step's interval checkpoint is written; an exit request is honoured next."""

    def state_dict(self) -> Optional[dict]:
        """This rank's state for a checkpoint, or None when there is nothing to save."""
        return None

    def write_checkpoint(self, trainer: "Trainer", directory: Path) -> None:
        """Write extra files into checkpoint `directory` (collective: every rank calls it)."""

    def forward_step(self) -> Optional[Callable]:
        """The run's forward step, for a component that changes the loss (None: it does not)."""
        return None

    def extra_flops_per_token(self, trainer: "Trainer") -> int:
        """FLOPs per training token this component adds to the coming step (asked before it)."""
        return 0
