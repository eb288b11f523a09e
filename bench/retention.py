"""Does pruning while pretraining retain more than the alternatives? A small-scale replication.

    python bench/retention.py [--out runs/retention] [--quick]

On the embedded corpus (Python stdlib source, made on the spot if missing), one process
per run, CPU:

0. pretrain a source model (configs/tiny.yaml's 5.0M-parameter shape) for `--source-iters`;
then, every run with the same token budget T (`--iters` steps of the same batches) and
the same validation set:
(a)  pap: pruning-aware pretraining from the source to `--target` of its parameters,
     k=2 gradient steps per round of p=8 removals, then plain training to T;
(a2) the same with 2x fewer gradient steps per pruning step (k=1, p=8);
(a4) the same with 4x fewer (k=1, p=16);
(b)  (a)'s final architecture, freshly initialised, trained for T (the source's LR recipe);
(c)  one-shot pruning of the source to the same target with the same metric (saliency of
     `--calib-batches` batches, no update), then plain training for T.

With `--obs`, EfficientLLM-B against A: (aB) is (a) with `prune.update: obs`, and both
are run again with the budget doubled (`a_pap_long`, `aB_pap_long`: 2T, the same pruning
stage followed by a continued stage twice as long). With `--layers`, per-layer widths: (g) is (a) with `prune.layers: greedy` (one head or
FFN channel of one layer per removal, so p = 8 x layers to remove as many groups per round), (ad) is Adapt-Pruner (`prune.layers: adaptive`,
metric `first`, increments of 5% of the parameters every `--adaptive-k` steps), both at
the same target and budget, with the resulting heads and FFN width of every layer.
With `--distill`, PAP + knowledge distillation from the source (docs/DISTILL.md;
`--distill-alpha`, temperature 1, the whole distribution, during both stages): (aKD) is (a)
and (aBKD) is (aB) with the teacher; then (a) and (aB) are run again for as many steps as
make their training FLOPs equal to their KD twin's (`a_pap_eqflops`, `aB_pap_eqflops`;
FLOPs from each run's metrics: the step's FLOPs, teacher forward included, summed over
steps; the steps past T counted at the final shape's), so the table compares them at equal tokens and at equal FLOPs.
`--skip-baselines` leaves out
(a2), (a4), (b) and (c). Every pap run reports its validation loss right after the
pruning stage as well as at T.

Prints a Markdown table (also written to OUT/results.md) of parameters, pruning-stage
length and validation loss. Runs two processes at a time on a 2-core machine; rerunning
skips the runs already complete (each run resumes or reuses its checkpoint directory).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO / "data/embedded/stdlib_text_document"


def base_config(args) -> dict:
    """configs/tiny.yaml's model and data, one process, one micro-batch per step."""
    tiny = yaml.safe_load((REPO / "configs/tiny.yaml").read_text())
    return {"model": tiny["model"], "parallel": {"tp": 1, "pp": 1},
            "train": {"micro_batch_size": 16, "global_batch_size": 16, "eval_interval": 0, "eval_iters": 8,
                      "lr_decay_style": "cosine"},
            "data": {"blend": [str(CORPUS)], "split": "98,2,0", "seq_length": 128},
            "log": {"interval": 50}, "checkpoint": {"save_interval": 0, "save_at_end": True}}


def schedule(iters: int, lr: float, min_lr: float) -> dict:
    return {"iters": iters, "lr": lr, "min_lr": min_lr, "warmup_iters": max(iters // 30, 1)}


def merged(base: dict, **sections) -> dict:
    out = json.loads(json.dumps(base))
    for name, values in sections.items():
        out.setdefault(name, {}).update(values)
    return out


class Bench:
    def __init__(self, args):
        self.args = args
        self.out = Path(args.out).resolve()
        self.out.mkdir(parents=True, exist_ok=True)
        self.base = base_config(args)
        self.env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
        self.seconds = {}
        self.budgets = {}
        """Steps of runs whose budget is not T (`*_long`: 2T; `*_eqflops`: measured)."""

    def train(self, name: str, cfg: dict) -> Path:
        """Run `pap.train` for `cfg` in OUT/name (skipped when already finished)."""
        run_dir = self.out / name
        cfg = merged(cfg, checkpoint={"dir": str(run_dir)})
        config = self.out / f"{name}.yaml"
        config.write_text(yaml.safe_dump(cfg))
        if self.final_loss(name) is not None:
            return run_dir
        start = time.time()
        self.command(name, [sys.executable, "-m", "pap.train", "--config", str(config)])
        self.seconds[name] = time.time() - start
        return run_dir

    def command(self, name: str, cmd: list) -> None:
        log = self.out / f"{name}.log"
        print(f"[{time.strftime('%H:%M:%S')}] {name}: {' '.join(cmd[1:4])} ... (log {log})", flush=True)
        with open(log, "a") as f:
            done = subprocess.run(cmd, cwd=REPO, env=self.env, stdout=f, stderr=subprocess.STDOUT)
        if done.returncode:
            sys.exit(f"error: {name} failed (status {done.returncode}); see {log}")

    def final_loss(self, name: str):
        metrics = self.out / name / "metrics.jsonl"
        if not metrics.is_file():
            return None
        losses = [r["lm loss validation"] for r in map(json.loads, metrics.read_text().splitlines())
                  if "lm loss validation" in r and r["iteration"] == self.iters_of(name)]
        return losses[-1] if losses else None

    def iters_of(self, name: str) -> int:
        if name == "source":
            return self.args.source_iters
        if name in self.budgets:
            return self.budgets[name]
        return 2 * self.args.iters if name.endswith("_long") else self.args.iters

    def records(self, name: str) -> list:
        metrics = self.out / name / "metrics.jsonl"
        return [r for r in map(json.loads, metrics.read_text().splitlines()) if "lm loss" in r] \
            if metrics.is_file() else []

    def flops(self, name: str) -> float:
        """Training FLOPs of run `name`: each step's logged throughput (TFLOP/s per process,
        teacher forward included) times its time, summed over steps (one process)."""
        return sum(r["throughput"] * r["iteration-time"] * 1e12 for r in self.records(name))

    def step_seconds(self, name: str) -> float:
        """Median seconds per step of run `name`."""
        import statistics

        return statistics.median(r["iteration-time"] for r in self.records(name))

    def teacher_line(self, name: str) -> str:
        """The run's start line about its teacher (weights and logits memory)."""
        log = self.out / f"{name}.log"
        lines = [l for l in log.read_text().splitlines() if "distill: teacher" in l] if log.is_file() else []
        return lines[-1].split("): ", 1)[-1].split(";")[0] if lines else "—"

    def loss_at(self, name: str, iteration: int):
        """Validation loss logged at `iteration` (the first report there), or None."""
        metrics = self.out / name / "metrics.jsonl"
        rows = [r for r in map(json.loads, metrics.read_text().splitlines())
                if "lm loss validation" in r and r["iteration"] == iteration] if metrics.is_file() else []
        return rows[0]["lm loss validation"] if rows else None

    def params(self, name: str) -> int:
        from pap import checkpoint

        return checkpoint.read(str(self.out / name)).arch.num_params()

    def pruning_stage(self, name: str):
        events = self.out / name / "pruning_events.jsonl"
        if not events.is_file():
            return None
        lines = events.read_text().splitlines()
        return json.loads(lines[-1])["iteration"], len(lines)

    def run(self) -> str:
        a = self.args
        source_lr = schedule(a.source_iters, 3e-3, 3e-4)
        derived_lr = schedule(a.iters, 1e-3, 1e-4)
        source = self.train("source", merged(self.base, train=source_lr))
        from_source = merged(self.base, train=derived_lr, checkpoint={"init_from": str(source)})

        def pap(name, k, p, update="none", budget=1, distill=None, **prune):
            steps = self.budgets.get(name, budget * a.iters)
            return self.train(name, merged(from_source, train=schedule(steps, 1e-3, 1e-4), prune={
                "enabled": True, "metric": a.metric, "target_params": a.target, "grad_steps": k, "prune_steps": p,
                "update": update, **prune}, **({"distill": distill} if distill else {})))

        def equal_flops(plain: str, distilled: str, update: str):
            """`plain` again, for as many steps as match `distilled`'s FLOPs."""
            name = f"{plain}_eqflops"
            # The steps past T run at the final shape: the last step's FLOPs each.
            last = self.records(plain)[-1]
            final_step = last["throughput"] * last["iteration-time"] * 1e12
            self.budgets[name] = a.iters + round((self.flops(distilled) - self.flops(plain)) / final_step)
            return pap(name, 2, 8, update)

        def oneshot_then_train():
            ckpt = self.out / "oneshot_ckpt"
            if not (ckpt / "latest_checkpointed_iteration.txt").is_file():
                self.command("oneshot_ckpt", [sys.executable, "-m", "pap.baselines", "oneshot", "--config",
                                              str(self.out / "source.yaml"), "--source", str(source), "--target",
                                              str(a.target), "--calib-batches", str(a.calib_batches), "--out",
                                              str(ckpt), f"prune.metric={a.metric}"])
            return self.train("c_oneshot", merged(self.base, train=derived_lr, checkpoint={"init_from": str(ckpt)}))

        with ThreadPoolExecutor(max_workers=a.parallel) as pool:
            if a.obs:
                jobs = [pool.submit(pap, "a_pap", 2, 8), pool.submit(pap, "aB_pap", 2, 8, "obs"),
                        pool.submit(pap, "a_pap_long", 2, 8, "none", 2), pool.submit(pap, "aB_pap_long", 2, 8, "obs", 2)]
                for job in jobs:
                    job.result()
            if a.distill:
                teacher = {"enabled": True, "alpha": a.distill_alpha, "temperature": 1.0, "during": "both"}
                jobs = [pool.submit(pap, "a_pap", 2, 8), pool.submit(pap, "aB_pap", 2, 8, "obs"),
                        pool.submit(pap, "aKD_pap", 2, 8, distill=teacher),
                        pool.submit(pap, "aBKD_pap", 2, 8, "obs", distill=teacher)]
                for job in jobs:
                    job.result()
                jobs = [pool.submit(equal_flops, "a_pap", "aKD_pap", "none"),
                        pool.submit(equal_flops, "aB_pap", "aBKD_pap", "obs")]
                for job in jobs:
                    job.result()
            if a.layers:
                # Adapt-Pruner prunes heads and FFN channels only, so the three modes meet at a
                # target every one of them can reach (`--layers-target`). One greedy removal
                # takes one layer's group where a uniform one takes every layer's: p = 8 x layers
                # removes as many groups per round as the uniform run.
                layers = self.base["model"]["num_layers"]
                target = {"target_params": a.layers_target}
                jobs = [pool.submit(pap, "u_pap", 2, 8, **target),
                        pool.submit(pap, "g_pap", 2, 8 * layers, layers="greedy", **target),
                        pool.submit(pap, "ad_pap", a.adaptive_k, 1, layers="adaptive", metric="first",
                                    increment=0.05, **target)]
                for job in jobs:
                    job.result()
            if a.skip_baselines:
                pap("a_pap", 2, 8)
                return self.table()
            for job in [pool.submit(pap, "a_pap", 2, 8), pool.submit(pap, "a2_pap", 1, 8)]:
                job.result()
            jobs = [pool.submit(pap, "a4_pap", 1, 16), pool.submit(oneshot_then_train)]
            scratch_ckpt = self.out / "scratch_ckpt"
            if not (scratch_ckpt / "latest_checkpointed_iteration.txt").is_file():
                self.command("scratch_ckpt", [sys.executable, "-m", "pap.baselines", "scratch", "--config",
                                              str(self.out / "source.yaml"), "--arch-from", str(self.out / "a_pap"),
                                              "--out", str(scratch_ckpt)])
            jobs.append(pool.submit(self.train, "b_scratch", merged(
                self.base, train=schedule(a.iters, 3e-3, 3e-4), checkpoint={"init_from": str(scratch_ckpt)})))
            for job in jobs:
                job.result()
        return self.table()

    def table(self) -> str:
        a = self.args
        tokens = a.iters * 16 * 128
        rows = [("source (trained from scratch)", "source", "—"),
                ("(a) pap, k=2 : p=8", "a_pap", None),
                ("(aB) pap + OBS update (EfficientLLM-B), k=2 : p=8", "aB_pap", None),
                ("(a2) pap, k=1 : p=8 (2x fewer steps per removal)", "a2_pap", None),
                ("(a4) pap, k=1 : p=16 (4x fewer)", "a4_pap", None),
                ("(b) (a)'s architecture from scratch", "b_scratch", "—"),
                ("(c) one-shot pruning of the source, then training", "c_oneshot", "0 (one shot)"),
                ("(a) at 2T", "a_pap_long", None), ("(aB) at 2T", "aB_pap_long", None),
                (f"(u) uniform layers (as a), target {a.layers_target}", "u_pap", None),
                (f"(g) greedy layers, k=2 : p=8 x layers, target {a.layers_target}", "g_pap", None),
                (f"(ad) adaptive layers (Adapt-Pruner: metric first, 5% increments every {a.adaptive_k} steps), "
                 f"target {a.layers_target}", "ad_pap", None)]
        lines = [f"T = {a.iters} steps x 16 x 128 = {tokens:,} tokens per derived run (source: {a.source_iters} steps); "
                 f"target {a.target} of the source; metric {a.metric}; validation loss on 8 x 16 x 128 held-out tokens.",
                 "", "| run | parameters | pruning stage (steps, removals) | validation loss after the pruning stage "
                 "| validation loss at the end | wall s |", "|---|---|---|---|---|---|"]
        for label, name, stage in rows:
            if self.final_loss(name) is None:
                continue
            after_stage = "—"
            if stage is None:
                last, count = self.pruning_stage(name)
                stage = f"{last} steps, {count} removals"
                value = self.loss_at(name, last)
                after_stage = f"{value:.4f}" if value is not None else "—"
            seconds = self.seconds.get(name)
            wall = f"{seconds:.0f}" if seconds else "(earlier run)"
            lines.append(f"| {label} | {self.params(name):,} | {stage} | {after_stage} | "
                         f"{self.final_loss(name):.4f} | {wall} |")
        if self.final_loss("aKD_pap") is not None:
            lines += self.distill_table()
        shaped = [(label, name) for label, name, _ in rows if name in ("u_pap", "g_pap", "ad_pap")
                  and self.final_loss(name) is not None]
        if len(shaped) > 1:
            lines += ["", "| run | query heads per layer | FFN width per layer | hidden |", "|---|---|---|---|"]
            from pap import checkpoint

            for label, name in shaped:
                arch = checkpoint.read(str(self.out / name)).arch
                heads = [arch.num_heads(l) for l in range(arch.num_layers)]
                lines.append(f"| {label} | {heads} | {arch.ffn} | {arch.hidden_size} |")
        oneshot_log = self.out / "oneshot_ckpt.log"
        if oneshot_log.is_file():
            text = oneshot_log.read_text()
            after_oneshot = float(text.split("validation loss ")[1].split(" before, ")[1].split(" after")[0])
            lines += ["", f"One-shot model right after pruning, before training: validation loss {after_oneshot:.4f} "
                          f"({self.params('oneshot_ckpt'):,} parameters)."]
        lines += ["", f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, CPU only."]
        return "\n".join(lines)


    def distill_table(self) -> list:
        """PAP + KD against PAP at equal tokens and at equal FLOPs."""
        lines = ["", f"Distillation from the source (alpha {self.args.distill_alpha}, T 1): FLOPs count each step's "
                     "forward and backward at its shape, plus the teacher's forward.", "",
                 "| run | steps | training FLOPs | s/step (median) | pruning stage (steps, removals) | "
                 "validation loss at the end | teacher on the rank |", "|---|---|---|---|---|---|---|"]
        for label, name in (("(a) pap", "a_pap"), ("(aKD) pap + KD", "aKD_pap"),
                            ("(a) pap at (aKD)'s FLOPs", "a_pap_eqflops"), ("(aB) pap + OBS", "aB_pap"),
                            ("(aBKD) pap + OBS + KD", "aBKD_pap"), ("(aB) pap + OBS at (aBKD)'s FLOPs", "aB_pap_eqflops")):
            if self.final_loss(name) is None:
                continue
            last, count = self.pruning_stage(name)
            lines.append(f"| {label} | {self.iters_of(name)} | {self.flops(name):.3e} | {self.step_seconds(name):.3f} | "
                         f"{last} steps, {count} removals | {self.final_loss(name):.4f} | {self.teacher_line(name)} |")
        return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/retention")
    parser.add_argument("--source-iters", type=int, default=300)
    parser.add_argument("--iters", type=int, default=300, help="the token budget T, in steps of 16 x 128 tokens")
    parser.add_argument("--target", type=float, default=0.35)
    parser.add_argument("--metric", default="mix")
    parser.add_argument("--calib-batches", type=int, default=8)
    parser.add_argument("--parallel", type=int, default=2, help="runs at a time")
    parser.add_argument("--obs", action="store_true", help="add EfficientLLM-B (prune.update=obs) vs A, at T and 2T")
    parser.add_argument("--layers", action="store_true", help="add greedy and adaptive per-layer pruning")
    parser.add_argument("--layers-target", type=float, default=0.6, help="target of the --layers runs")
    parser.add_argument("--adaptive-k", type=int, default=9, help="steps between adaptive increments")
    parser.add_argument("--distill", action="store_true",
                        help="add PAP + KD (A and B) against PAP at equal tokens and equal FLOPs")
    parser.add_argument("--distill-alpha", type=float, default=0.5, help="distill.alpha of the --distill runs")
    parser.add_argument("--skip-baselines", action="store_true", help="only the source and the pap runs")
    parser.add_argument("--quick", action="store_true", help="a ~3-minute smoke run (tiny budgets)")
    args = parser.parse_args()
    if args.quick:
        args.source_iters, args.iters, args.target, args.calib_batches = 30, 30, 0.8, 2
    if not (REPO / f"{CORPUS}.meta.json").is_file():
        subprocess.run([sys.executable, "-m", "data_prep.embedded_corpus", "--output", str(CORPUS.parent)],
                       cwd=REPO, check=True)
    start = time.time()
    table = Bench(args).run()
    text = f"```bash\npython bench/retention.py {' '.join(sys.argv[1:])}\n```\n\n{table}\n\nWall time: {time.time() - start:.0f} s\n"
    print(text)
    out = Path(args.out) / "results.md"
    out.write_text(text)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
