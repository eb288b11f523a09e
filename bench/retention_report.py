"""Tables, paired differences and the regime plot of `bench/retention.py`'s seeded runs.

Every figure is read back from the runs' own files (`metrics.jsonl`, `pruning_events.jsonl`,
checkpoints), so a rerun that skips finished runs reports exactly what they measured.
"""

from __future__ import annotations

import hashlib
import json
import platform
import statistics
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple


def median_range(values: Sequence[float], digits: int = 4) -> str:
    """'median [min, max]' of `values` ('—' when empty)."""
    if not values:
        return "—"
    if len(values) == 1:
        return f"{values[0]:.{digits}f} (1 seed)"
    return f"{statistics.median(values):.{digits}f} [{min(values):.{digits}f}, {max(values):.{digits}f}]"


def paired(values_x: Dict[int, float], values_y: Dict[int, float]) -> Tuple[List[float], List[int]]:
    """Per-seed differences x - y over the seeds both have, and those seeds."""
    seeds = sorted(set(values_x) & set(values_y))
    return [values_x[s] - values_y[s] for s in seeds], seeds


def difference_cell(diffs: Sequence[float]) -> Tuple[str, str]:
    """(median [range] of the differences, 'x lower in n of N seeds')."""
    if not diffs:
        return "—", "—"
    lower = sum(d < 0 for d in diffs)
    return median_range(diffs), f"{lower} of {len(diffs)}"


def environment(corpus_prefix: Path) -> Dict[str, str]:
    """What two machines' tables must share to be compared: corpus content, CPU, versions."""
    import megatron.core
    import torch

    digest = hashlib.sha256()
    for suffix in (".bin", ".idx"):
        with open(f"{corpus_prefix}{suffix}", "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import os

    return {"corpus_sha256": digest.hexdigest(), "cpu": cpu, "cores": str(os.cpu_count()),
            "python": platform.python_version(), "torch": torch.__version__,
            "megatron_core": megatron.core.__version__}


class Report:
    """Reads the runs of every seed and renders the Markdown tables."""

    def __init__(self, seeds: Sequence[int], run_dir: Callable[[int, str], Path], steps_of: Callable[[int, str], int]):
        self.seeds = list(seeds)
        self.run_dir = run_dir
        self.steps_of = steps_of

    # --- per run -------------------------------------------------------------------------
    def _metrics(self, seed: int, name: str) -> List[dict]:
        path = self.run_dir(seed, name) / "metrics.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []

    def final_loss(self, seed: int, name: str) -> Optional[float]:
        """Validation loss at the run's last step, or None when the run is not finished."""
        return self.loss_at(seed, name, self.steps_of(seed, name))

    def loss_at(self, seed: int, name: str, iteration: int) -> Optional[float]:
        rows = [r["lm loss validation"] for r in self._metrics(seed, name)
                if "lm loss validation" in r and r["iteration"] == iteration]
        return rows[0] if rows else None

    def flops(self, seed: int, name: str) -> float:
        """Training FLOPs: every step's logged throughput times its time (forward and backward
        of the model as it was at that step, plus a teacher's forward when distilling)."""
        return sum(r["throughput"] * r["iteration-time"] * 1e12 for r in self._metrics(seed, name) if "lm loss" in r)

    def last_step_flops(self, seed: int, name: str) -> float:
        last = [r for r in self._metrics(seed, name) if "lm loss" in r][-1]
        return last["throughput"] * last["iteration-time"] * 1e12

    def params(self, seed: int, name: str) -> int:
        from pap import checkpoint

        return checkpoint.read(str(self.run_dir(seed, name))).arch.num_params()

    def pruning_stage(self, seed: int, name: str) -> Optional[Tuple[int, int]]:
        """(step the target was reached, removals), or None for a run that did not prune."""
        events = self.run_dir(seed, name) / "pruning_events.jsonl"
        if not events.is_file():
            return None
        lines = events.read_text().splitlines()
        return json.loads(lines[-1])["iteration"], len(lines)

    def after_stage(self, seed: int, name: str) -> Optional[float]:
        stage = self.pruning_stage(seed, name)
        return self.loss_at(seed, name, stage[0]) if stage else None

    def per_seed(self, name: str, value: Callable[[int, str], Optional[float]] = None) -> Dict[int, float]:
        """{seed: value} over the seeds whose run `name` finished."""
        value = value or self.final_loss
        out = {}
        for seed in self.seeds:
            if self.final_loss(seed, name) is None:
                continue
            v = value(seed, name)
            if v is not None:
                out[seed] = v
        return out

    # --- tables --------------------------------------------------------------------------
    def rows_table(self, rows: Sequence[Tuple[str, str]]) -> List[str]:
        """One line per run: parameters, steps, FLOPs, pruning stage and losses over seeds."""
        lines = ["| run | seeds | parameters | steps | training FLOPs | pruning stage: steps, removals "
                 "| validation loss after the pruning stage | validation loss at the end |",
                 "|---|---|---|---|---|---|---|---|"]
        for label, name in rows:
            finals = self.per_seed(name)
            if not finals:
                continue
            seeds = sorted(finals)
            params = [self.params(s, name) for s in seeds]
            stages = [self.pruning_stage(s, name) for s in seeds]
            if all(stage is None for stage in stages):
                stage_text, after = "—", "—"
            else:
                steps = [st[0] for st in stages if st]
                removals = [st[1] for st in stages if st]
                stage_text = f"{median_range(steps, 0)}, {median_range(removals, 0)}"
                after = median_range(list(self.per_seed(name, self.after_stage).values()))
            flops = [self.flops(s, name) for s in seeds]
            lines.append(f"| {label} | {len(seeds)} | {statistics.median(params):,.0f} | "
                         f"{median_range([self.steps_of(s, name) for s in seeds], 0)} | "
                         f"{statistics.median(flops):.3e} | {stage_text} | {after} | {median_range(list(finals.values()))} |")
        return lines

    def comparisons_table(self, comparisons: Sequence[Tuple[str, str, str, str]]) -> List[str]:
        """Paired per-seed differences of final validation loss, x - y: negative means x is lower."""
        lines = ["| comparison | at equal | x - y: median [range] | x lower in | FLOPs x / y (median) |",
                 "|---|---|---|---|---|"]
        for label, equal, x, y in comparisons:
            diffs, seeds = paired(self.per_seed(x), self.per_seed(y))
            if not diffs:
                continue
            cell, sign = difference_cell(diffs)
            ratio = statistics.median(self.flops(s, x) / self.flops(s, y) for s in seeds)
            lines.append(f"| {label} | {equal} | {cell} | {sign} seeds | {ratio:.3f} |")
        return lines

    def sweep_table(self, multiples: Sequence[int], stage_steps: int, runs: Dict[str, Callable[[int], str]]) -> List[str]:
        """The regime sweep: for each continued-stage multiple, each method's loss and the gaps."""
        lines = ["| continued stage / pruning stage (planned; measured) | steps | "
                 + " | ".join(f"{label}" for label in runs) + " | A - one-shot | B - one-shot | B - A "
                 "| FLOPs A / one-shot | A - one-shot at A's FLOPs | B - one-shot at A's FLOPs |",
                 "|---" * (len(runs) + 8) + "|"]
        a_name, b_name, c_name = (runs[label] for label in runs)
        for m in multiples:
            cells = [median_range(list(self.per_seed(f(m)).values())) for f in runs.values()]
            if all(c == "—" for c in cells):
                continue
            measured = []
            for seed in self.seeds:
                stage = self.pruning_stage(seed, a_name(m)) if self.final_loss(seed, a_name(m)) is not None else None
                if stage:
                    measured.append((self.steps_of(seed, a_name(m)) - stage[0]) / stage[0])
            gaps = []
            for x, y in ((a_name(m), c_name(m)), (b_name(m), c_name(m)), (b_name(m), a_name(m))):
                diffs, _ = paired(self.per_seed(x), self.per_seed(y))
                cell, sign = difference_cell(diffs)
                gaps.append(f"{cell}, lower in {sign}" if diffs else "—")
            _, seeds = paired(self.per_seed(a_name(m)), self.per_seed(c_name(m)))
            ratio = (f"{statistics.median(self.flops(s, a_name(m)) / self.flops(s, c_name(m)) for s in seeds):.3f}"
                     if seeds else "—")
            equal = []
            for x in (a_name(m), b_name(m)):
                diffs, _ = paired(self.per_seed(x), self.per_seed(f"{c_name(m)}_eqflops"))
                cell, sign = difference_cell(diffs)
                equal.append(f"{cell}, lower in {sign}" if diffs else "—")
            lines.append(f"| {m}x; {median_range(measured, 2)} | {(1 + m) * stage_steps} | " + " | ".join(cells)
                         + " | " + " | ".join(gaps) + f" | {ratio} | " + " | ".join(equal) + " |")
        return lines

    def sweep_plot(self, multiples: Sequence[int], runs: Dict[str, Callable[[int], str]], out: Path) -> Optional[Path]:
        """Loss gap to one-shot against the continued-stage multiple (median, min-max bars)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        a_name, b_name, c_name = (runs[label] for label in runs)
        fig, ax = plt.subplots(figsize=(6.5, 4.2))
        drawn = False
        for label, name in (("A (pap) - one-shot", a_name), ("B (pap + OBS) - one-shot", b_name)):
            xs, med, lo, hi = [], [], [], []
            for m in multiples:
                diffs, _ = paired(self.per_seed(name(m)), self.per_seed(c_name(m)))
                if diffs:
                    xs.append(m)
                    med.append(statistics.median(diffs))
                    lo.append(med[-1] - min(diffs))
                    hi.append(max(diffs) - med[-1])
            if xs:
                ax.errorbar(xs, med, yerr=[lo, hi], marker="o", capsize=3, label=label)
                drawn = True
        if not drawn:
            plt.close(fig)
            return None
        ax.axhline(0, color="grey", linewidth=0.8)
        ax.set_xscale("log", base=2)
        ax.set_xticks(list(multiples), [f"{m}x" for m in multiples])
        ax.set(xlabel="continued stage / pruning stage", ylabel="validation loss difference (negative: pap better)",
               title="pruning while pretraining vs one-shot, by continued-stage length")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out, dpi=120)
        plt.close(fig)
        return out
