"""A run's digest: what must not change when code is restructured.

    .venv/bin/python bench/replay_digest.py --tree /path/to/tree_a --work /tmp/replay_work --out /tmp/a.json
    .venv/bin/python bench/replay_digest.py --tree /path/to/tree_b --work /tmp/replay_work --out /tmp/b.json \\
        --compare /tmp/a.json                        # prints what differs; exit status 1 if anything does
    .venv/bin/python bench/replay_digest.py --compare /tmp/a.json /tmp/b.json    # two digests, no runs

Runs three short pruning runs at TP=2 (two gloo processes on CPU, `torchrun -m pap.train`
with the working directory and PYTHONPATH set to `--tree`, so that tree's own `pap` runs)
from one small source model, and writes what they produced to `--out` as JSON:

* `pruning_events.jsonl`, verbatim (the whole file, and each iteration's lines);
* `metrics.jsonl` with the wall-clock values masked (`WALL_CLOCK`; the keys stay);
* every tensor of every checkpoint the run saved (the interval saves, the `pruned` one and
  the end-of-run one): weights and Adam moments at full TP=1 shape, read from disk by
  torch's distributed-checkpoint reader in this process, so the reading does not depend on
  the code being checked; the checkpoint's `pap_state.json` and its `.pt` files (saliency
  window, per-rank state);
* rank 0's console output with timing figures masked (`TIMING`).

The runs (`RUNS`) are 12 steps each of `configs/tiny_pap.yaml` (grad_steps 2: rounds at steps
2, 4, 6, ... until the target; checkpoints at step 5, inside a window, at the step that reaches
the target (`pruned`), at step 10 and at the end); each takes 45-60 s on two idle CPU cores, the
whole digest about 3 minutes (4 when the source is trained):
  uniform   `prune.layers=uniform`: FFN channels, then hidden channels, then heads (3 rounds);
  greedy    `prune.layers=greedy prune.update=obs`: single groups of each kind, OBS-updated (4 rounds);
  adaptive  `prune.layers=adaptive`: increments of ~230 one-layer removals (4 rounds).

The source (`<work>/source`, `configs/tiny.yaml` for 10 steps at TP=1) and the corpus
(`<work>/data/embedded`) are made once, by the first tree run with that `--work`, and then
shared, so that two trees differ only in the pruning runs; their digests are in the output
too, which shows that both sides started from the same bytes. Delete `<work>/source` to have
a tree train its own source: the source's items then also check plain training.
Paths under `--work` and `--tree` are written as `<work>` and `<tree>`. One digest at a
time per `--work` (the runs go to `<work>/runs`, replaced each time).
"""

from __future__ import annotations

import argparse
import difflib
import hashlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

WALL_CLOCK = ("iteration-time", "throughput", "tokens-per-sec", "pruning/round_s", "pruning/obs_s")
"""`metrics.jsonl` keys whose values depend on the machine's speed: masked, the keys kept."""

TIMING = [(re.compile(r"tok/s [\d,.]+"), "tok/s *"),
          (re.compile(r"elapsed \d+:\d\d:\d\d"), "elapsed *"),
          (re.compile(r"in \d+\.\d+ s\b"), "in * s")]
"""Console figures that depend on the machine's speed (the progress line, the round's time)."""

SOURCE = ["--config", "configs/tiny.yaml", "parallel.tp=1", "parallel.pp=1", "train.iters=10",
          "train.warmup_iters=2", "train.eval_interval=0", "train.eval_iters=0", "log.interval=5"]

COMMON = ["--config", "configs/tiny_pap.yaml", "parallel.tp=2", "parallel.pp=1", "train.iters=12",
          "train.warmup_iters=2", "train.eval_interval=6", "train.eval_iters=1", "log.interval=1",
          "checkpoint.save_interval=5", "prune.grad_steps=2"]

RUNS = {
    # 8 FFN channels of every layer (floor 696), 8 hidden channels (floor 248), then heads to the target.
    "uniform": ["prune.layers=uniform", "prune.target_params=0.92", "prune.prune_steps=8",
                "prune.min_ffn=696", "prune.min_hidden=248"],
    # Up to 4 FFN channels per layer (floor 700), 8 hidden channels, then single heads (uneven KV groups).
    "greedy": ["prune.layers=greedy", "prune.update=obs", "prune.normalize=params", "prune.target_params=0.95",
               "prune.prune_steps=8", "prune.min_ffn=700", "prune.min_hidden=248"],
    # Increments of 5% of the parameters, per-layer widths from the layer cosines.
    "adaptive": ["prune.layers=adaptive", "prune.metric=first", "prune.increment=0.05", "prune.target_params=0.85",
                 "prune.min_ffn=2", "prune.min_heads=2"],
}


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def tensor_digest(tensor) -> str:
    """dtype, shape and the sha256 of the raw bytes."""
    import torch

    raw = tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
    return f"{str(tensor.dtype).removeprefix('torch.')} {list(tensor.shape)} {sha256(raw)}"


def object_digest(obj) -> str:
    """sha256 of a canonical form of a loaded `.pt` object: tensors by `tensor_digest`, dict keys sorted."""
    import torch

    def canonical(value):
        if isinstance(value, torch.Tensor):
            return tensor_digest(value)
        if isinstance(value, dict):
            return {str(k): canonical(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
        if isinstance(value, (list, tuple)):
            return [canonical(v) for v in value]
        return repr(value)

    return sha256(json.dumps(canonical(obj)).encode())


class Digest:
    """Items (name -> digest) of one tree's runs, with paths under work and tree masked."""

    def __init__(self, tree: Path, work: Path):
        self.tree, self.work = tree, work
        self.items: dict = {}
        self.stdout: dict = {}
        self.seconds: dict = {}

    def mask_paths(self, text: str) -> str:
        return text.replace(str(self.work), "<work>").replace(str(self.tree), "<tree>")

    def env(self) -> dict:
        return {**os.environ, "PYTHONPATH": str(self.tree), "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}

    def run(self, name: str, command: list) -> str:
        """Run `command` in the tree; returns its stdout (stdout and stderr also go to <work>/logs)."""
        start = time.time()
        done = subprocess.run(command, cwd=self.tree, env=self.env(), capture_output=True, text=True, timeout=900)
        self.seconds[name] = round(time.time() - start, 1)
        logs = self.work / "logs"
        logs.mkdir(exist_ok=True)
        (logs / f"{name}.stdout").write_text(done.stdout)
        (logs / f"{name}.stderr").write_text(done.stderr)
        if done.returncode != 0:
            sys.exit(f"{name} failed (exit {done.returncode}); see {logs / name}.stderr:\n{done.stderr[-3000:]}")
        print(f"{name}: {self.seconds[name]} s", flush=True)
        return done.stdout

    def check_import(self) -> None:
        found = subprocess.run([sys.executable, "-c", "import pap; print(pap.__file__)"], cwd=self.tree,
                               env=self.env(), capture_output=True, text=True, check=True).stdout.strip()
        if not Path(found).resolve().is_relative_to(self.tree):
            sys.exit(f"`import pap` in {self.tree} finds {found}, not the tree's own package")

    def corpus(self) -> str:
        """The demo corpus's prefix, made under <work> if it is not there yet."""
        out = self.work / "data" / "embedded"
        if not (out / "stdlib_text_document.meta.json").is_file():
            self.run("corpus", [sys.executable, "-m", "data_prep.embedded_corpus", "--output", str(out)])
        for name in ("stdlib_text_document.bin", "stdlib_text_document.idx"):
            self.items[f"corpus/{name}"] = sha256((out / name).read_bytes())
        return str(out / "stdlib_text_document")

    def source(self, blend: str) -> Path:
        """The source checkpoint, trained under <work> if it is not there yet."""
        path = self.work / "source"
        if not (path / "latest_checkpointed_iteration.txt").is_file():
            staging = self.work / "source.partial"
            shutil.rmtree(staging, ignore_errors=True)
            self.run("source", [sys.executable, "-m", "pap.train", *SOURCE, f"checkpoint.dir={staging}",
                                f"data.blend=[{blend}]"])
            staging.rename(path)
        self.checkpoints("source", path)
        return path

    def pruning_run(self, name: str, blend: str, source: Path) -> None:
        run_dir = self.work / "runs" / name
        shutil.rmtree(run_dir, ignore_errors=True)  # else the run would resume
        stdout = self.run(name, [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                                 "-m", "pap.train", *COMMON, *RUNS[name], f"checkpoint.dir={run_dir}",
                                 f"checkpoint.init_from={source}", f"data.blend=[{blend}]"])
        lines = [self.mask_paths(line) for line in stdout.splitlines()]
        for pattern, replacement in TIMING:
            lines = [pattern.sub(replacement, line) for line in lines]
        self.stdout[name] = lines
        self.items[f"{name}/stdout"] = sha256("\n".join(lines).encode())
        self.jsonl(f"{name}/pruning_events.jsonl", (run_dir / "pruning_events.jsonl").read_text().splitlines())
        metrics = []
        for line in (run_dir / "metrics.jsonl").read_text().splitlines():
            record = json.loads(line)
            metrics.append(json.dumps({k: "<wall-clock>" if k in WALL_CLOCK else v for k, v in record.items()}))
        self.jsonl(f"{name}/metrics.jsonl", metrics)
        pruned = run_dir / "pruned"
        self.items[f"{name}/pruned"] = os.readlink(pruned) if pruned.is_symlink() else "(none)"
        self.checkpoints(name, run_dir)

    def jsonl(self, name: str, lines: list) -> None:
        """The whole file's digest, and each iteration's lines' (to say where two runs part)."""
        self.items[name] = sha256("".join(line + "\n" for line in lines).encode())
        by_iteration: dict = {}
        for line in lines:
            by_iteration.setdefault(json.loads(line)["iteration"], []).append(line)
        for iteration, group in by_iteration.items():
            self.items[f"{name}@{iteration}"] = sha256("\n".join(group).encode())

    def checkpoints(self, name: str, root: Path) -> None:
        """Every checkpoint under `root`: its state file, its tensors, its `.pt` files."""
        import torch

        saved = sorted(p for p in root.glob("iter_*") if p.is_dir())
        self.items[f"{name}/checkpoints"] = " ".join(p.name for p in saved)
        for path in saved:
            prefix = f"{name}/{path.name}"
            state = self.mask_paths((path / "pap_state.json").read_text())
            self.items[f"{prefix}/pap_state.json"] = sha256(state.encode())
            for key, tensor in read_tensors(path).items():
                self.items[f"{prefix}/{key}"] = tensor_digest(tensor)
            for file in sorted(path.glob("*.pt")):
                self.items[f"{prefix}/{file.name}"] = object_digest(torch.load(file, weights_only=True))


def read_tensors(path: Path) -> dict:
    """Every tensor of a dist_checkpointing (torch_dist) checkpoint, whole, in one process."""
    import torch
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    reader = dcp.FileSystemReader(str(path))
    state = {}
    for key, meta in reader.read_metadata().state_dict_metadata.items():
        if not isinstance(meta, TensorStorageMetadata):
            raise ValueError(f"{path}: {key} is not a tensor")
        covered = sum(math.prod(chunk.sizes) for chunk in meta.chunks)
        if covered != math.prod(meta.size):  # the saved boxes must tile the tensor
            raise ValueError(f"{path}: {key}: the saved pieces cover {covered} of {math.prod(meta.size)} elements")
        state[key] = torch.empty(meta.size, dtype=meta.properties.dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "no process group: loading in a single process", as intended
        dcp.load(state, storage_reader=reader, no_dist=True)
    return dict(sorted(state.items()))


def make(tree: Path, work: Path) -> dict:
    digest = Digest(tree, work)
    work.mkdir(parents=True, exist_ok=True)
    digest.check_import()
    blend = digest.corpus()
    source = digest.source(blend)
    for name in RUNS:
        digest.pruning_run(name, blend, source)
    commit = subprocess.run(["git", "-C", str(tree), "describe", "--always", "--dirty", "--abbrev=40"],
                            capture_output=True, text=True).stdout
    return {"tree": str(tree), "commit": commit.strip(), "seconds": digest.seconds, "items": digest.items,
            "stdout": digest.stdout}


def compare(a: dict, b: dict, a_name: str, b_name: str) -> int:
    """Print the items that differ (and the first console lines that do); returns their count."""
    differ = [k for k in a["items"] if k in b["items"] and a["items"][k] != b["items"][k]]
    only_a = [k for k in a["items"] if k not in b["items"]]
    only_b = [k for k in b["items"] if k not in a["items"]]
    for label, keys in (("differs", differ), (f"only in {a_name}", only_a), (f"only in {b_name}", only_b)):
        for key in keys:
            print(f"{label}: {key}")
    for run in sorted(set(a["stdout"]) & set(b["stdout"])):
        diff = list(difflib.unified_diff(a["stdout"][run], b["stdout"][run], f"{a_name} {run}", f"{b_name} {run}",
                                         n=1, lineterm=""))
        if diff:
            print("\n".join(diff[:40]))
    total = len(differ) + len(only_a) + len(only_b)
    print(f"{len(a['items'])} items in {a_name}, {len(b['items'])} in {b_name}: "
          + ("identical" if total == 0 else f"{total} differ"))
    return total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tree", type=Path, default=REPO, help="the source tree to run (default: this script's)")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "pap_replay",
                        help="corpus, source model, runs and logs")
    parser.add_argument("--out", type=Path, help="write the digest here (JSON)")
    parser.add_argument("--compare", type=Path, nargs="+", metavar="DIGEST.json",
                        help="one file: compare the new digest with it; two: compare them, without running")
    args = parser.parse_args()
    if args.compare and len(args.compare) == 2:
        a, b = (json.loads(p.read_text()) for p in args.compare)
        return 1 if compare(a, b, str(args.compare[0]), str(args.compare[1])) else 0
    if not args.out or (args.compare and len(args.compare) > 2):
        parser.error("give --out (and optionally --compare OTHER.json), or --compare A.json B.json")
    digest = make(args.tree.resolve(), args.work.resolve())
    args.out.write_text(json.dumps(digest, indent=1) + "\n")
    print(f"{len(digest['items'])} items written to {args.out}")
    if args.compare:
        return 1 if compare(json.loads(args.compare[0].read_text()), digest, str(args.compare[0]), str(args.out)) else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
