"""The components a run's config asks for (`pap.callbacks.Callback`), in the order they run.

`Trainer(cfg)` takes its components from here unless it is given its own list. A new
feature that listens to the training loop adds a line here and a config section; the
trainer does not change.
"""

from __future__ import annotations

from typing import List

from pap.callbacks import Callback
from pap.config import PapConfig
from pap.distill.component import Distillation
from pap.eval.training import TrainingHarness
from pap.prune_hook import PruningHook


def callbacks_for(cfg: PapConfig) -> List[Callback]:
    """The run's components: pruning (`prune.enabled`), distillation (`distill.enabled`),
    then lm-eval during training (`eval.harness_tasks`)."""
    callbacks: List[Callback] = []
    if cfg.prune.enabled:
        events = f"{cfg.checkpoint.dir}/pruning_events.jsonl" if cfg.checkpoint.dir else None
        callbacks.append(PruningHook(cfg.prune, events))
    if cfg.distill.enabled:
        callbacks.append(Distillation(cfg.distill))
    harness = TrainingHarness.from_config(cfg)
    if harness is not None:
        callbacks.append(harness)
    return callbacks
