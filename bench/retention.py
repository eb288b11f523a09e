"""Does pruning while pretraining retain more than the alternatives? A small-scale replication, with seeds.

    python bench/retention.py [--out runs/retention] [--seeds 3] [--quick]

On the embedded corpus (Python stdlib source, made on the spot if missing), one process
per run, CPU. Every row is run once per seed (`--seeds N`: train.seed = 1234, 1235, ...).
A seed decides the source model's initialisation, the order of the training samples of
every run (megatron's GPTDataset shuffle), the held-out samples of the validation loss
(the same for every run of that seed), the one-shot run's calibration batches and the
scratch run's initialisation. Each seed has its own source, so a row's spread includes
the source's; comparisons are per-seed paired differences on the same validation set.

0. source: pretrain configs/tiny.yaml's 5.0M-parameter shape for `--source-iters` steps;
then, each with the same token budget T (`--iters` steps of 16 x 128 tokens), from the
seed's source:
(a)  pap (EfficientLLM-A): k=2 gradient steps per round of p=8 removals to `--target` of
     the source's parameters, then plain training to T;
(aB) the same with the OBS update (EfficientLLM-B, `prune.update: obs`);
(b)  (a)'s final architecture, freshly initialised, trained for T (the source's LR recipe);
(c)  one-shot pruning of the source to the same target with the same metric (saliency of
     `--calib-batches` batches, no update), then plain training for T;
(c=) and (b=): (c) and (b) trained on until their training FLOPs equal (a)'s (the pruning
     stage trains a larger model than one-shot's or scratch's for the same tokens).
`--step-ablation` adds (a2) k=1 : p=8 and (a4) k=1 : p=16 (2x and 4x fewer gradient
steps per removal).

The regime sweep (default; `--no-sweep` leaves it out): the paper continues training for
7-14x as long as the pruning stage. A shorter pruning stage (k=1 : p=26, about 30 steps
to the target) is followed by a continued stage of m x `--sweep-stage` steps for m in
1, 2, 4, 8, for A, B and one-shot at equal tokens, so every length is its own run with
its own cosine schedule. A pruning stage of (a)'s 190 steps would make the 8x runs 1,700
steps each; the shorter stage keeps the default bench (3 seeds) to about two hours here
(the sweep is 3 x 3 x 570 steps).

`--layers`: per-layer widths at `--layers-target` (u uniform, g greedy, ad Adapt-Pruner
with its published defaults). `--distill`: PAP + knowledge distillation from the source
(docs/DISTILL.md) for A and B, and A and B trained on to their KD twin's FLOPs.
`--no-main` runs only those rows (the same OUT shares the seeds' sources).

Writes OUT/results.md (the tables and the environment: corpus hash, CPU, torch and
megatron-core versions), OUT/results.json (every run's per-seed figures) and
OUT/regime.png. Runs `--parallel` runs at a time; rerunning skips finished runs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Callable, Dict, List, Sequence, Tuple

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench.retention_report import Report, environment, median_range  # noqa: E402

CORPUS = REPO / "data/embedded/stdlib_text_document"
FIRST_SEED = 1234
SWEEP = (1, 2, 4, 8)
SWEEP_QUICK = (1, 2)
SWEEP_PRUNE_STEPS = 26  # p of the sweep's k=1 rounds: about 30 steps to the 0.35 target
MICRO, SEQ = 16, 128


def base_config(seed: int) -> dict:
    """configs/tiny.yaml's model and data, one process, one micro-batch per step."""
    tiny = yaml.safe_load((REPO / "configs/tiny.yaml").read_text())
    return {"model": tiny["model"], "parallel": {"tp": 1, "pp": 1},
            "train": {"micro_batch_size": MICRO, "global_batch_size": MICRO, "eval_interval": 0, "eval_iters": 8,
                      "lr_decay_style": "cosine", "seed": seed},
            "data": {"blend": [str(CORPUS)], "split": "98,2,0", "seq_length": SEQ},
            "log": {"interval": 50}, "checkpoint": {"save_interval": 0, "save_at_end": True}}


def schedule(iters: int, lr: float, min_lr: float) -> dict:
    return {"iters": iters, "lr": lr, "min_lr": min_lr, "warmup_iters": max(iters // 30, 1)}


def merged(base: dict, **sections) -> dict:
    out = json.loads(json.dumps(base))
    for name, values in sections.items():
        out.setdefault(name, {}).update(values)
    return out


Task = Tuple[Tuple[int, str], List[Tuple[int, str]], Callable[[], None]]


def run_graph(tasks: Sequence[Task], parallel: int) -> None:
    """Run `tasks` (key, dependencies, function) `parallel` at a time, each once its
    dependencies are done, in list order among those ready."""
    done, running = set(), {}
    pending = list(tasks)
    with ThreadPoolExecutor(max_workers=parallel) as pool:
        while pending or running:
            for task in list(pending):
                key, deps, fn = task
                if len(running) < parallel and all(d in done for d in deps):
                    running[pool.submit(fn)] = key
                    pending.remove(task)
            if not running:
                missing = sorted({d for _, deps, _ in pending for d in deps} - done)
                raise SystemExit(f"error: tasks wait on runs that are not scheduled: {missing}")
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                future.result()
                done.add(running.pop(future))


class Bench:
    def __init__(self, args):
        self.args = args
        self.out = Path(args.out).resolve()
        self.out.mkdir(parents=True, exist_ok=True)
        self.seeds = [FIRST_SEED + i for i in range(args.seeds)]
        self.env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
        self.budgets: Dict[Tuple[int, str], int] = {}
        """Steps of runs whose budget is computed (equal FLOPs) or not T (the sweep)."""
        self.multiples = SWEEP_QUICK if args.quick else SWEEP
        self.report = Report(self.seeds, self.run_dir, self.steps_of)

    # --- runs ----------------------------------------------------------------------------
    def run_dir(self, seed: int, name: str) -> Path:
        return self.out / f"seed_{seed}" / name

    def steps_of(self, seed: int, name: str) -> int:
        if name == "source":
            return self.args.source_iters
        if (seed, name) in self.budgets:
            return self.budgets[(seed, name)]
        for m in self.multiples:
            if name.endswith(f"_sweep{m}x"):
                return (1 + m) * self.args.sweep_stage
        if name.endswith("_eqflops"):
            # Computed when its run is scheduled; a finished run's is in its config.
            config = self.run_dir(seed, name).with_suffix(".yaml")
            if config.is_file():
                return yaml.safe_load(config.read_text())["train"]["iters"]
        return self.args.iters

    def train(self, seed: int, name: str, cfg: dict) -> None:
        """Run `pap.train` for `cfg` in OUT/seed_S/name (skipped when already finished)."""
        run_dir = self.run_dir(seed, name)
        cfg = merged(cfg, checkpoint={"dir": str(run_dir)})
        if self.report.final_loss(seed, name) is not None:
            return
        config = run_dir.with_suffix(".yaml")
        config.parent.mkdir(parents=True, exist_ok=True)
        config.write_text(yaml.safe_dump(cfg))
        self.command(seed, name, [sys.executable, "-m", "pap.train", "--config", str(config)])

    def command(self, seed: int, name: str, cmd: list) -> None:
        log = self.run_dir(seed, name).with_suffix(".log")
        log.parent.mkdir(parents=True, exist_ok=True)
        print(f"[{time.strftime('%H:%M:%S')}] seed {seed} {name}: {' '.join(cmd[1:4])} ... (log {log})", flush=True)
        with open(log, "a") as f:
            done = subprocess.run(cmd, cwd=REPO, env=self.env, stdout=f, stderr=subprocess.STDOUT)
        if done.returncode:
            raise SystemExit(f"error: seed {seed} {name} failed (status {done.returncode}); see {log}")

    def tasks(self) -> List[Task]:
        a = self.args
        tasks: List[Task] = []

        def add(name, deps, fn, seeds=None):
            for seed in seeds or self.seeds:
                tasks.append(((seed, name), [(seed, d) for d in deps], (lambda s=seed: fn(s))))

        def source(seed):
            self.train(seed, "source", merged(base_config(seed), train=schedule(a.source_iters, 3e-3, 3e-4)))

        def from_source(seed, steps):
            return merged(base_config(seed), train=schedule(steps, 1e-3, 1e-4),
                          checkpoint={"init_from": str(self.run_dir(seed, "source"))})

        def pap(name, k, p, update="none", distill=None, **prune):
            def fn(seed):
                cfg = merged(from_source(seed, self.steps_of(seed, name)), prune={
                    "enabled": True, "metric": a.metric, "target_params": a.target, "grad_steps": k,
                    "prune_steps": p, "update": update, **prune})
                self.train(seed, name, merged(cfg, **({"distill": distill} if distill else {})))
            return fn

        def baseline_ckpt(kind, *options):
            """`pap.baselines KIND` from the seed's source config into OUT/seed_S/KIND_ckpt, once."""
            def fn(seed):
                ckpt = self.run_dir(seed, f"{kind}_ckpt")
                if (ckpt / "latest_checkpointed_iteration.txt").is_file():
                    return
                self.command(seed, f"{kind}_ckpt", [
                    sys.executable, "-m", "pap.baselines", kind, "--config", str(self.run_dir(seed, "source.yaml")),
                    *[str(o(seed)) if callable(o) else str(o) for o in options], "--out", str(ckpt)])
            return fn

        oneshot_ckpt = baseline_ckpt("oneshot", "--source", lambda seed: self.run_dir(seed, "source"), "--target",
                                     a.target, "--calib-batches", a.calib_batches, f"prune.metric={a.metric}")
        scratch_ckpt = baseline_ckpt("scratch", "--arch-from", lambda seed: self.run_dir(seed, "a_pap"))

        def fixed_shape(name, init, lr=(1e-3, 1e-4)):
            def fn(seed):
                steps = self.steps_of(seed, name)
                self.train(seed, name, merged(base_config(seed), train=schedule(steps, *lr),
                                              checkpoint={"init_from": str(self.run_dir(seed, init))}))
            return fn

        def equal_flops(name, plain, reference, run):
            """`run` for `name`: `plain` trained on until its FLOPs equal `reference`'s."""
            def fn(seed):
                if not self.run_dir(seed, name).with_suffix(".yaml").is_file():
                    extra = self.report.flops(seed, reference) - self.report.flops(seed, plain)
                    self.budgets[(seed, name)] = self.steps_of(seed, plain) + max(
                        0, round(extra / self.report.last_step_flops(seed, plain)))
                run(seed)
            return fn

        add("source", [], source)
        if a.main or a.distill:
            add("a_pap", ["source"], pap("a_pap", 2, 8))
            add("aB_pap", ["source"], pap("aB_pap", 2, 8, "obs"))
        if a.main and not a.skip_baselines:
            add("oneshot_ckpt", ["source"], oneshot_ckpt)
            add("c_oneshot", ["oneshot_ckpt"], fixed_shape("c_oneshot", "oneshot_ckpt"))
            add("scratch_ckpt", ["a_pap"], scratch_ckpt)
            add("b_scratch", ["scratch_ckpt"], fixed_shape("b_scratch", "scratch_ckpt", (3e-3, 3e-4)))
            add("c_oneshot_eqflops", ["a_pap", "c_oneshot"],
                equal_flops("c_oneshot_eqflops", "c_oneshot", "a_pap", fixed_shape("c_oneshot_eqflops", "oneshot_ckpt")))
            add("b_scratch_eqflops", ["a_pap", "b_scratch"],
                equal_flops("b_scratch_eqflops", "b_scratch", "a_pap",
                            fixed_shape("b_scratch_eqflops", "scratch_ckpt", (3e-3, 3e-4))))
        if a.main and a.step_ablation:
            add("a2_pap", ["source"], pap("a2_pap", 1, 8))
            add("a4_pap", ["source"], pap("a4_pap", 1, 16))
        if a.main and a.sweep:
            # Longest first: the 8x runs decide the bench's wall time.
            for m in sorted(self.multiples, reverse=True):
                add(f"sA_sweep{m}x", ["source"], pap(f"sA_sweep{m}x", 1, SWEEP_PRUNE_STEPS))
                add(f"sB_sweep{m}x", ["source"], pap(f"sB_sweep{m}x", 1, SWEEP_PRUNE_STEPS, "obs"))
                if not a.skip_baselines:
                    add(f"sC_sweep{m}x", ["oneshot_ckpt"], fixed_shape(f"sC_sweep{m}x", "oneshot_ckpt"))
        if a.main and a.sweep and not a.skip_baselines:
            # The longest length at equal FLOPs too: one-shot trained on to A's FLOPs.
            m = max(self.multiples)
            name = f"sC_sweep{m}x_eqflops"
            add(name, [f"sA_sweep{m}x", f"sC_sweep{m}x"],
                equal_flops(name, f"sC_sweep{m}x", f"sA_sweep{m}x", fixed_shape(name, "oneshot_ckpt")))
        if a.layers:
            layers = base_config(FIRST_SEED)["model"]["num_layers"]
            target = {"target_params": a.layers_target}
            add("u_pap", ["source"], pap("u_pap", 2, 8, **target))
            # One greedy removal takes one layer's group where a uniform one takes every
            # layer's: p = 8 x layers removes as many groups per round.
            add("g_pap", ["source"], pap("g_pap", 2, 8 * layers, layers="greedy", **target))
            # Adapt-Pruner with pap's defaults, which are its published ones (docs/PRUNING.md).
            add("ad_pap", ["source"], pap("ad_pap", a.adaptive_k, 1, layers="adaptive", metric="first", **target))
        if a.distill:
            teacher = {"enabled": True, "alpha": a.distill_alpha, "temperature": 1.0, "during": "both"}
            add("aKD_pap", ["source"], pap("aKD_pap", 2, 8, distill=teacher))
            add("aBKD_pap", ["source"], pap("aBKD_pap", 2, 8, "obs", distill=teacher))
            add("a_pap_eqflops", ["a_pap", "aKD_pap"],
                equal_flops("a_pap_eqflops", "a_pap", "aKD_pap", pap("a_pap_eqflops", 2, 8)))
            add("aB_pap_eqflops", ["aB_pap", "aBKD_pap"],
                equal_flops("aB_pap_eqflops", "aB_pap", "aBKD_pap", pap("aB_pap_eqflops", 2, 8, "obs")))
        # Every seed's row before the next row: an interrupted bench has whole rows.
        order = {name: i for i, name in enumerate(dict.fromkeys(key[1] for key, _, _ in tasks))}
        tasks = sorted(tasks, key=lambda t: (order[t[0][1]], t[0][0]))
        if a.only:
            # Just these rows, beside a bench still running the others: what they need must be done.
            for key, deps, _ in tasks:
                missing = [d for d in deps if d[1] not in a.only and self.report.final_loss(*d) is None
                           and not (self.run_dir(*d) / "latest_checkpointed_iteration.txt").is_file()]
                if key[1] in a.only and missing:
                    raise SystemExit(f"error: --only {key[1]} needs {missing} finished first")
            tasks = [(key, [d for d in deps if d[1] in a.only], fn) for key, deps, fn in tasks if key[1] in a.only]
        return tasks

    # --- report --------------------------------------------------------------------------
    def tables(self) -> str:
        a, r = self.args, self.report
        tokens = a.iters * MICRO * SEQ
        lines = [f"Seeds: {', '.join(map(str, self.seeds))}. T = {a.iters} steps x {MICRO} x {SEQ} = {tokens:,} tokens "
                 f"per derived run (source: {a.source_iters} steps); target {a.target} of the source; metric {a.metric}; "
                 f"validation loss on 8 x {MICRO} x {SEQ} held-out tokens (the seed's). Cells: median [min, max] "
                 f"over seeds.", ""]
        lines += r.rows_table([
            ("source (trained from scratch)", "source"),
            ("(a) pap, k=2 : p=8", "a_pap"),
            ("(aB) pap + OBS update (EfficientLLM-B), k=2 : p=8", "aB_pap"),
            ("(a2) pap, k=1 : p=8 (2x fewer steps per removal)", "a2_pap"),
            ("(a4) pap, k=1 : p=16 (4x fewer)", "a4_pap"),
            ("(b) (a)'s architecture from scratch", "b_scratch"),
            ("(b=) (b) at (a)'s FLOPs", "b_scratch_eqflops"),
            ("(c) one-shot pruning of the source, then training", "c_oneshot"),
            ("(c=) (c) at (a)'s FLOPs", "c_oneshot_eqflops")])
        lines += ["", "Paired differences of the final validation loss, per seed (x - y; negative: x is lower). "
                      "FLOPs x / y: training FLOPs.", ""]
        lines += r.comparisons_table([
            ("(aB) B vs (a) A", "tokens", "aB_pap", "a_pap"),
            ("(a) A vs (c) one-shot", "tokens", "a_pap", "c_oneshot"),
            ("(a) A vs (c=) one-shot", "FLOPs", "a_pap", "c_oneshot_eqflops"),
            ("(aB) B vs (c) one-shot", "tokens", "aB_pap", "c_oneshot"),
            ("(aB) B vs (c=) one-shot", "FLOPs (of A)", "aB_pap", "c_oneshot_eqflops"),
            ("(a) A vs (b) scratch", "tokens", "a_pap", "b_scratch"),
            ("(a) A vs (b=) scratch", "FLOPs", "a_pap", "b_scratch_eqflops"),
            ("(c) one-shot vs (b) scratch", "tokens", "c_oneshot", "b_scratch"),
            ("(a) A vs source", "— (A starts from it)", "a_pap", "source"),
            ("(a2) vs (a)", "tokens", "a2_pap", "a_pap"),
            ("(a4) vs (a)", "tokens", "a4_pap", "a_pap")])
        if a.sweep:
            runs = {"A (pap)": lambda m: f"sA_sweep{m}x", "B (pap + OBS)": lambda m: f"sB_sweep{m}x",
                    "one-shot": lambda m: f"sC_sweep{m}x"}
            lines += ["", f"Regime sweep: pruning stage k=1 : p={SWEEP_PRUNE_STEPS} (planned {a.sweep_stage} steps), then a continued "
                          f"stage of m x {a.sweep_stage} steps; one-shot trains the same tokens. Gaps: per-seed paired "
                          "differences, median [range], and in how many seeds the first is lower.", ""]
            lines += r.sweep_table(self.multiples, a.sweep_stage, runs)
            lines += ["", "Pruning stages of the sweep's runs (median [range] over seeds and lengths): "
                      + self._stage_summary([f"s{x}_sweep{m}x" for x in "AB" for m in self.multiples])]
            if r.sweep_plot(self.multiples, runs, self.out / "regime.png"):
                lines += ["", f"Plot: {self.out / 'regime.png'}"]
        if a.layers:
            lines += ["", f"Per-layer widths at target {a.layers_target}:", ""]
            lines += r.rows_table([("(u) uniform layers, k=2 : p=8", "u_pap"),
                                   (f"(g) greedy layers, k=2 : p=8 x layers", "g_pap"),
                                   (f"(ad) Adapt-Pruner (published defaults), an increment every {a.adaptive_k} steps",
                                    "ad_pap")])
            lines += [""] + r.comparisons_table([("(g) greedy vs (u) uniform", "tokens", "g_pap", "u_pap"),
                                                 ("(ad) adaptive vs (u) uniform", "tokens", "ad_pap", "u_pap")])
            lines += ["", "| run | seed | query heads per layer | KV heads per layer | FFN width per layer | hidden |",
                      "|---|---|---|---|---|---|"]
            from pap import checkpoint

            for label, name in (("(u)", "u_pap"), ("(g)", "g_pap"), ("(ad)", "ad_pap")):
                for seed in sorted(r.per_seed(name)):
                    arch = checkpoint.read(str(self.run_dir(seed, name))).arch
                    lines.append(f"| {label} | {seed} | {[arch.num_heads(l) for l in range(arch.num_layers)]} | "
                                 f"{[arch.num_kv_heads(l) for l in range(arch.num_layers)]} | {arch.ffn} | "
                                 f"{arch.hidden_size} |")
        if a.distill:
            lines += ["", f"Distillation from the source (alpha {a.distill_alpha}, T 1): FLOPs count the teacher's "
                          "forward too.", ""]
            lines += r.rows_table([("(a) pap", "a_pap"), ("(aKD) pap + KD", "aKD_pap"),
                                   ("(a=) (a) at (aKD)'s FLOPs", "a_pap_eqflops"), ("(aB) pap + OBS", "aB_pap"),
                                   ("(aBKD) pap + OBS + KD", "aBKD_pap"),
                                   ("(aB=) (aB) at (aBKD)'s FLOPs", "aB_pap_eqflops")])
            lines += [""] + r.comparisons_table([("(aKD) vs (a)", "tokens", "aKD_pap", "a_pap"),
                                                 ("(aKD) vs (a=)", "FLOPs", "aKD_pap", "a_pap_eqflops"),
                                                 ("(aBKD) vs (aB)", "tokens", "aBKD_pap", "aB_pap"),
                                                 ("(aBKD) vs (aB=)", "FLOPs", "aBKD_pap", "aB_pap_eqflops")])
        after = self._oneshot_after()
        if after:
            lines += ["", f"One-shot model right after pruning, before training: validation loss {after}."]
        return "\n".join(lines)

    def _stage_summary(self, names: Sequence[str]) -> str:
        stages = [self.report.pruning_stage(s, n) for s in self.seeds for n in names
                  if self.report.final_loss(s, n) is not None]
        stages = [st for st in stages if st]
        return (f"{median_range([st[0] for st in stages], 0)} steps, {median_range([st[1] for st in stages], 0)} "
                f"removals") if stages else "—"

    def _oneshot_after(self) -> str:
        values = []
        for seed in self.seeds:
            log = self.run_dir(seed, "oneshot_ckpt").with_suffix(".log")
            if log.is_file() and " before, " in log.read_text():
                text = log.read_text()
                values.append(float(text.split("validation loss ")[1].split(" before, ")[1].split(" after")[0]))
        return median_range(values) if values else ""

    def results_json(self, names: Sequence[str]) -> dict:
        r = self.report
        runs = {}
        for name in names:
            per = {}
            for seed in self.seeds:
                final = r.final_loss(seed, name)
                if final is None:
                    continue
                stage = r.pruning_stage(seed, name)
                per[str(seed)] = {"final_loss": final, "after_stage_loss": r.after_stage(seed, name),
                                  "steps": self.steps_of(seed, name), "flops": r.flops(seed, name),
                                  "params": r.params(seed, name), "pruning_stage": stage}
            if per:
                runs[name] = per
        return runs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/retention")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per row (train.seed 1234, 1235, ...)")
    parser.add_argument("--source-iters", type=int, default=300)
    parser.add_argument("--iters", type=int, default=300, help="the token budget T, in steps of 16 x 128 tokens")
    parser.add_argument("--target", type=float, default=0.35)
    parser.add_argument("--metric", default="mix")
    parser.add_argument("--calib-batches", type=int, default=8)
    parser.add_argument("--parallel", type=int, default=2, help="runs at a time")
    parser.add_argument("--no-sweep", dest="sweep", action="store_false",
                        help="leave out the regime sweep (continued stage 1-8x the pruning stage)")
    parser.add_argument("--sweep-stage", type=int, default=30,
                        help="the sweep's planned pruning-stage length in steps; continued stages are multiples of it")
    parser.add_argument("--step-ablation", action="store_true", help="add (a2) and (a4): fewer steps per removal")
    parser.add_argument("--layers", action="store_true", help="add uniform, greedy and adaptive per-layer pruning")
    parser.add_argument("--layers-target", type=float, default=0.6, help="target of the --layers runs")
    parser.add_argument("--adaptive-k", type=int, default=4,
                        help="steps between adaptive increments (at delta 0.02, 36 increments reach 0.6 here)")
    parser.add_argument("--distill", action="store_true",
                        help="add PAP + KD (A and B) against PAP at equal tokens and equal FLOPs")
    parser.add_argument("--distill-alpha", type=float, default=0.5, help="distill.alpha of the --distill runs")
    parser.add_argument("--skip-baselines", action="store_true", help="leave out one-shot and scratch")
    parser.add_argument("--no-main", dest="main", action="store_false",
                        help="only the rows of --layers / --distill (the sources are shared with the main rows)")
    parser.add_argument("--quick", action="store_true", help="a smoke run of a few minutes (tiny budgets)")
    parser.add_argument("--only", nargs="+", metavar="RUN",
                        help="run only these rows (e.g. sC_sweep8x_eqflops), their inputs being finished")
    parser.add_argument("--report", action="store_true",
                        help="run nothing: the tables of the runs already finished in OUT (while others run)")
    args = parser.parse_args()
    if args.seeds < 1:
        parser.error("--seeds must be at least 1")
    if args.quick:
        args.source_iters, args.iters, args.target, args.calib_batches, args.sweep_stage = 20, 20, 0.9, 2, 10
    if not (REPO / f"{CORPUS}.meta.json").is_file():
        subprocess.run([sys.executable, "-m", "data_prep.embedded_corpus", "--output", str(CORPUS.parent)],
                       cwd=REPO, check=True)
    start = time.time()
    bench = Bench(args)
    tasks = bench.tasks()
    print(f"retention bench: {len(tasks)} runs ({len(bench.seeds)} seeds), {args.parallel} at a time, in {bench.out}",
          flush=True)
    if not args.report:
        run_graph(tasks, args.parallel)
    env = environment(CORPUS)
    table = bench.tables()
    env_lines = "\n".join(f"- {k}: {v}" for k, v in env.items())
    text = (f"```bash\npython bench/retention.py {' '.join(sys.argv[1:])}\n```\n\n{table}\n\n"
            f"Environment:\n{env_lines}\n\nWall time of this invocation: {time.time() - start:.0f} s\n")
    print(text)
    (bench.out / ("report.md" if args.report else "results.md")).write_text(text)
    names = list(dict.fromkeys(key[1] for key, _, _ in tasks))
    (bench.out / "results.json").write_text(json.dumps({"environment": env, "arguments": vars(args),
                                                        "runs": bench.results_json(names)}, indent=1))
    print(f"wrote {bench.out / ('report.md' if args.report else 'results.md')} and results.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
