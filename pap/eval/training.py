"""lm-evaluation-harness during training (`eval.harness_tasks`, `eval.harness_interval`).

Every `harness_interval` steps the run saves a checkpoint (unless it has just saved one),
and rank 0 evaluates it with `python -m pap.eval harness` in a child process: it exports
the checkpoint to a temporary directory and runs lm-eval there. A child keeps lm-eval,
its Hugging Face model and `accelerate` (which would read torchrun's variables and take the
run for a multi-process evaluation) out of the training process. The other ranks wait in
a barrier, so a harness run must fit in the process group's timeout (30 minutes): choose
`eval.harness_limit` accordingly. Per-task scores go to TensorBoard as `eval/<task>`, to
the metrics file, and the full lm-eval output to `<checkpoint.dir>/eval/iter_XXXXXXX.json`.
A failed harness run is reported and training goes on.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Optional

import torch.distributed as dist

from pap import checkpoint
from pap.callbacks import Callback
from pap.eval.table import parse_task, rows

# torchrun's variables: the child must see a single-process world.
_LAUNCHER_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "GROUP_WORLD_SIZE",
                  "ROLE_RANK", "ROLE_WORLD_SIZE", "ROLE_NAME", "MASTER_ADDR", "MASTER_PORT",
                  "TORCHELASTIC_RUN_ID", "TORCHELASTIC_RESTART_COUNT", "TORCHELASTIC_MAX_RESTARTS",
                  "TORCHELASTIC_USE_AGENT_STORE", "TORCHELASTIC_ERROR_FILE")


class TrainingHarness(Callback):
    """Runs the harness at the configured steps of a `pap.trainer.Trainer` (a training component)."""

    name = "harness"

    def __init__(self, cfg):
        self.cfg = cfg
        self.eval = cfg.eval

    @classmethod
    def from_config(cls, cfg) -> Optional["TrainingHarness"]:
        """None when `eval.harness_tasks` is empty."""
        return cls(cfg) if cfg.eval.harness_tasks else None

    def due(self, iteration: int) -> bool:
        return iteration % self.eval.harness_interval == 0

    def on_step_end(self, trainer) -> None:
        if self.due(trainer.iteration):
            self.run(trainer, trainer.progress, trainer.last_saved)

    def command(self, checkpoint_dir: Path, output: Path) -> list:
        """The `pap.eval harness` command line for one checkpoint."""
        ev = self.eval
        command = [sys.executable, "-m", "pap.eval", "harness", "--model", str(checkpoint_dir),
                   "--tokenizer", str(ev.harness_tokenizer), "--tasks", ",".join(map(str, ev.harness_tasks)),
                   "--batch-size", str(ev.harness_batch_size), "--output", str(output)]
        if ev.harness_include_path:
            command += ["--include-path", str(ev.harness_include_path)]
        if ev.harness_limit:
            command += ["--limit", str(ev.harness_limit)]
        return command

    def run(self, trainer, progress, last_saved: Optional[int]) -> Optional[int]:
        """Save (if needed), evaluate on rank 0, log; collective. Returns the last saved iteration."""
        iteration = trainer.iteration
        if last_saved != iteration:
            trainer.save()
            last_saved = iteration
            progress.print(f"saved checkpoint {checkpoint.iteration_dir(self.cfg.checkpoint.dir, iteration)}")
        if trainer.topo.rank == 0:
            self._evaluate(checkpoint.iteration_dir(self.cfg.checkpoint.dir, iteration), iteration, progress)
        dist.barrier()
        return last_saved

    def _evaluate(self, checkpoint_dir: Path, iteration: int, progress) -> None:

        output = Path(self.cfg.checkpoint.dir) / "eval" / f"iter_{iteration:07d}.json"
        env = {k: v for k, v in os.environ.items() if k not in _LAUNCHER_VARS}
        result = subprocess.run(self.command(checkpoint_dir, output), env=env, capture_output=True, text=True)
        if result.returncode != 0 or not output.is_file():
            lines = [l for l in result.stderr.splitlines() if l.strip()]
            reason = lines[-1] if lines else f"exit status {result.returncode}"
            progress.print(f"pap: eval harness at iteration {iteration} failed ({reason}); training goes on")
            return
        document = json.loads(output.read_text())
        results = [_Loaded(m["model"], m) for m in document["models"]]
        columns = [parse_task(str(t)) for t in self.eval.harness_tasks]
        scores = {f"eval/{task}": values[0] for task, _, _, values in rows(results, columns)
                  if values[0] is not None}
        progress.scalars(iteration, scores)
        progress.print(f"eval harness at iteration {iteration}: "
                       + ", ".join(f"{name[5:]} {100 * value:.2f}" for name, value in scores.items())
                       + f" ({output})")


class _Loaded:
    """A model's entry of a `pap.eval harness --output` file, shaped like `harness.ModelResult`."""

    def __init__(self, path: str, results: dict):
        self.path = path
        self.results = results
