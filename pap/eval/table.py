"""The benchmark table: one row per task, one column per model, and the average.

Per task it shows the metric pruning papers report for it, as lm-eval computes it:
`acc` (the choice of highest log-likelihood) or `acc_norm` (log-likelihood divided by the
choice's length in characters, so long choices are not penalised). `--tasks task:metric` picks another.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence

from pap.errors import PapError

PAPER_TASKS = ("arc_easy", "arc_challenge", "boolq", "hellaswag", "openbookqa", "piqa", "winogrande")
REPORTED_METRIC = {
    "arc_easy": "acc", "arc_challenge": "acc_norm", "boolq": "acc", "hellaswag": "acc_norm",
    "openbookqa": "acc_norm", "piqa": "acc", "winogrande": "acc",
}


@dataclass(frozen=True)
class TaskColumn:
    """A requested task and, when the user named one, the metric to show for it."""

    task: str
    metric: Optional[str] = None


def parse_task(spec: str) -> TaskColumn:
    """'piqa' or 'piqa:acc_norm' -> TaskColumn."""
    task, _, metric = spec.strip().partition(":")
    if not task:
        raise PapError(f"--tasks: empty task name in {spec!r}; give names separated by commas, e.g. arc_easy,piqa")
    return TaskColumn(task, metric or None)


def metric_for(task: str, scores: dict, chosen: Optional[str]) -> Optional[str]:
    """The metric shown for `task`: the user's, else the reported one, else acc or acc_norm,
    else the first numeric one lm-eval computed."""
    names = [key.split(",")[0] for key, value in scores.items()
             if "," in key and "_stderr" not in key and isinstance(value, (int, float))]
    if chosen:
        if chosen not in names:
            raise PapError(f"--tasks {task}:{chosen}: lm-eval computed no {chosen!r} for {task} "
                           f"(it has {', '.join(names) or 'none'})")
        return chosen
    for candidate in (REPORTED_METRIC.get(task), "acc", "acc_norm"):
        if candidate in names:
            return candidate
    return names[0] if names else None


def _value(scores: dict, metric: str) -> float:
    key = next(k for k in scores if k.split(",")[0] == metric)  # 'acc,none': metric, then filter
    return float(scores[key])


def rows(results: Sequence, columns: Sequence[TaskColumn]) -> List[tuple]:
    """[(task, metric, n, [value per model or None])] for every evaluated (leaf) task,
    in the order requested."""
    chosen = {c.task: c.metric for c in columns}
    order = [c.task for c in columns]
    names: List[str] = []
    for result in results:
        groups = set(result.results.get("groups", {}))
        for task in result.results.get("results", {}):
            if task not in groups and task not in names:
                names.append(task)
    names.sort(key=lambda t: order.index(t) if t in order else len(order))
    table = []
    for task in names:
        metric = None
        for result in results:
            scores = result.results["results"].get(task)
            if scores is not None:
                metric = metric or metric_for(task, scores, chosen.get(task))
        if metric is None:
            continue
        values, n = [], None
        for result in results:
            scores = result.results["results"].get(task)
            values.append(_value(scores, metric) if scores is not None and metric in
                          {k.split(",")[0] for k in scores} else None)
            n = n or result.results.get("n-samples", {}).get(task, {}).get("effective")
        table.append((task, metric, n, values))
    return table


def averages(table: List[tuple], count: int) -> List[Optional[float]]:
    """Mean of each model's shown metrics (None where a model misses a task)."""
    out = []
    for i in range(count):
        values = [row[3][i] for row in table]
        out.append(sum(values) / len(values) if values and None not in values else None)
    return out


def render(results: Sequence, columns: Sequence[TaskColumn], markdown: bool = False) -> str:
    """The table as aligned text (the console) or as Markdown; values in percent."""
    table = rows(results, columns)
    header = ["task", "metric", "n"] + [r.path for r in results]

    def cell(value):
        return "-" if value is None else f"{100 * value:.2f}"

    body = [[task, metric, str(n or ""), *[cell(v) for v in values]] for task, metric, n, values in table]
    body.append(["average", "", "", *[cell(v) for v in averages(table, len(results))]])
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * 3 + "---:|" * len(results)]
        lines += ["| " + " | ".join(line) + " |" for line in body]
        return "\n".join(lines) + "\n"
    widths = [max(len(line[i]) for line in [header] + body) for i in range(len(header))]
    numeric = set(range(2, len(header)))

    def fmt(line):
        return "  ".join(text.rjust(w) if i in numeric else text.ljust(w)
                         for i, (text, w) in enumerate(zip(line, widths))).rstrip()

    return "\n".join(fmt(line) for line in [header] + body) + "\n"
