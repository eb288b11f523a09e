"""Benchmark accuracy of one or more models through EleutherAI's lm-evaluation-harness.

    python -m pap.eval harness --model SOURCE --model PRUNED [--tasks arc_easy,piqa] [--limit 100]

Each model is a Hugging Face export (a plain Llama, or pap's remote code for pruned
shapes, loaded with `trust_remote_code=True`) or a pap checkpoint, exported to a temporary
directory first. Tasks run zero-shot with lm-eval's own prompts and metrics; the table shows,
per task, the metric pruning papers report for it (`table.REPORTED_METRIC`) and their average.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence

from pap.errors import PapError
from pap.eval import models
from pap.eval.table import PAPER_TASKS, TaskColumn, parse_task, render, rows

# Datasets that `datasets` reads from local files with a builtin loader: a task made of
# these (or of a local directory) needs no network, so the run can be made offline.
_LOCAL_LOADERS = {"json", "csv", "parquet", "text", "arrow"}
_OFFLINE_VARS = ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")


@dataclass
class ModelResult:
    """One model's lm-eval output (`results` as `simple_evaluate` returns it)."""

    path: str
    results: dict
    samples: Dict[str, list] = field(default_factory=dict)


def default_tasks() -> List[str]:
    """The paper's seven commonsense tasks."""
    return list(PAPER_TASKS)


def task_manager(include_path: Optional[str]):
    """lm-eval's task index, with the task YAMLs under `include_path` added."""
    from lm_eval.tasks import TaskManager

    if include_path is not None and not Path(include_path).is_dir():
        raise PapError(f"--include-path {include_path}: not a directory; give the folder holding the task YAMLs")
    return TaskManager(include_path=include_path)


def check_tasks(manager, columns: Sequence[TaskColumn], include_path: Optional[str]) -> None:
    """One error line for the first task lm-eval does not know (before any model loads)."""
    known = set(manager.all_tasks)
    for column in columns:
        if column.task not in known:
            where = f" nor in --include-path {include_path}" if include_path else ""
            raise PapError(f"--tasks: unknown task {column.task!r} (not one of lm-eval's{where}); "
                           f"`lm-eval ls tasks` lists them, --include-path adds a folder of task YAMLs")


def all_local(manager, columns: Sequence[TaskColumn]) -> bool:
    """True when every task reads its data from local files (a builtin loader such as
    `json`, or a directory that exists), so evaluating them needs no network."""
    for column in columns:
        entry = manager.task_index.get(column.task)
        config = (entry.cfg or {}) if entry is not None else {}
        source = config.get("dataset_path")
        if not source or (source not in _LOCAL_LOADERS and not Path(str(source)).is_dir()):
            return False
    return True


@contextlib.contextmanager
def offline(enabled: bool) -> Iterator[None]:
    """Hugging Face libraries offline for the duration, when `enabled`.

    `datasets` and `huggingface_hub` read the variables once, at import (lm-eval's task
    index imports them), so their module constants are switched as well; all of it is
    restored afterwards, and nothing changes for runs of hub tasks.
    """
    if not enabled:
        yield
        return
    import sys

    saved_env = {name: os.environ.get(name) for name in _OFFLINE_VARS}
    patched = []
    for module_name, attributes in (("huggingface_hub.constants", ("HF_HUB_OFFLINE",)),
                                    ("datasets.config", ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))):
        module = sys.modules.get(module_name)
        for attribute in attributes if module is not None else ():
            if hasattr(module, attribute):
                patched.append((module, attribute, getattr(module, attribute)))
                setattr(module, attribute, True)
    os.environ.update({name: "1" for name in _OFFLINE_VARS})
    try:
        yield
    finally:
        for module, attribute, value in patched:
            setattr(module, attribute, value)
        for name, value in saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _quiet() -> None:
    """lm-eval logs every request batch at INFO; keep its warnings only."""
    for name in ("lm-eval", "lm_eval", "datasets", "evaluate"):
        logging.getLogger(name).setLevel(logging.WARNING)


def evaluate_export(export_dir: Path, manager, columns: Sequence[TaskColumn], limit: Optional[int],
                    batch_size: int, device: Optional[str], dtype: str, log_samples: bool) -> dict:
    """lm-eval's `simple_evaluate` on one Hugging Face directory; returns its result dict."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    remote = models.uses_remote_code(export_dir)
    tokenizer = models.load_tokenizer(export_dir, remote)
    # An explicit device keeps HFLM from guessing; dtype "auto" keeps the export's own.
    lm = HFLM(pretrained=str(export_dir), tokenizer=tokenizer, trust_remote_code=remote, dtype=dtype,
              batch_size=batch_size, device=device or ("cuda" if _cuda() else "cpu"))
    try:
        output = lm_eval.simple_evaluate(model=lm, tasks=[c.task for c in columns], task_manager=manager,
                                         limit=limit, log_samples=log_samples)
    except ConnectionError as exc:  # a hub dataset on a node without network (or an unreachable hub)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PapError(f"--tasks {','.join(c.task for c in columns)}: a dataset could not be downloaded "
                       f"({first}); on a node without network, pre-download the tasks' datasets and set "
                       f"HF_DATASETS_OFFLINE=1 (docs/RUNNING.md, Evaluating a run)") from None
    finally:
        del lm
        gc.collect()
        if _cuda():
            import torch

            torch.cuda.empty_cache()
    if output is None:  # lm-eval returns results on its rank 0 only
        raise PapError("lm-eval returned no results; run pap.eval harness as a single process")
    return output


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def run(model_paths: Sequence[str], tasks: Optional[Sequence[str]] = None, include_path: Optional[str] = None,
        batch_size: int = 8, limit: Optional[int] = None, tokenizer: Optional[str] = None,
        device: Optional[str] = None, dtype: str = "auto", log_samples: bool = False,
        report=print) -> List[ModelResult]:
    """Evaluate every model on `tasks` (default: the paper's seven); returns their results.

    Every path and task is checked before the first model is loaded, so a typo costs seconds.
    """
    columns = [parse_task(t) for t in (tasks or default_tasks())]
    for path in model_paths:
        kind = models.kind_of(path)
        if kind == models.CHECKPOINT and tokenizer is None:
            raise PapError(f"--model {path} is a pap checkpoint: give --tokenizer DIR (the tokenizer its data "
                           f"were made with) so that it can be exported for the harness")
        if kind == models.EXPORT:
            models.check_export(Path(path))
    if tokenizer is not None and not Path(tokenizer).exists():
        raise PapError(f"--tokenizer {tokenizer}: no such file or directory")
    _quiet()
    manager = task_manager(include_path)
    check_tasks(manager, columns, include_path)
    out = []
    with offline(all_local(manager, columns)):
        for path in model_paths:
            with models.as_export(path, tokenizer, report=report) as export_dir:
                output = evaluate_export(export_dir, manager, columns, limit, batch_size, device, dtype,
                                         log_samples)
            samples = output.pop("samples", {}) or {}
            out.append(ModelResult(path=path, results=output, samples=samples))
            if len(out) == 1:
                rows(out, columns)  # a `task:metric` lm-eval did not compute fails before the next model
    return out


def write_outputs(results: Sequence[ModelResult], columns: Sequence[TaskColumn], output: str) -> List[Path]:
    """`output` (JSON: every model's full lm-eval output, samples when logged, and the table)
    and the table as Markdown beside it (same name, `.md`)."""
    from lm_eval.utils import handle_non_serializable

    path = Path(output)
    path.parent.mkdir(parents=True, exist_ok=True)
    markdown = render(results, columns, markdown=True)
    document = {"table": markdown,
                "models": [{"model": r.path, **r.results, **({"samples": r.samples} if r.samples else {})}
                           for r in results]}
    path.write_text(json.dumps(document, indent=1, default=handle_non_serializable))
    md = path.with_suffix(".md")
    md.write_text(markdown)
    return [path, md]
