"""Tokenize JSON lines or Parquet into Megatron indexed datasets, in parallel and restartably.

    python -m data_prep.tokenize --input 'raw/fineweb-edu/*.parquet' --output-prefix data/fineweb-edu \\
        --tokenizer path/to/SmolLM-360M --append-eod --workers 32

Inputs are paths, globs or directories of `.jsonl`/`.json` (JSON lines), `.jsonl.gz`,
`.jsonl.zst` and `.parquet` files. The tokenizer is a Hugging Face directory or
`tokenizer.json`, or a SentencePiece `.model`. For every `--json-keys` key (default
`text`) it writes

    {PREFIX}_{key}_document.bin/.idx   megatron-core IndexedDataset, one document per record
                                       (uint16 tokens when the vocabulary has < 65,500 ids, else int32)
    {PREFIX}_{key}_document.meta.json  vocab_size, eod, documents, tokens, dtype, tokenizer, skips

A Hugging Face byte-level BPE (GPT-2 style, the SmolLM family) is encoded by a word cache
(`data_prep/bytelevel.py`): the text is split into pre-tokens here and the library's BPE
runs once per distinct pre-token. The ids are the library's; a text where they could
differ (an added token inside it, a character whose Unicode class the two regex engines
disagree on) goes to the library. `--encoder library` encodes everything with the library.

Inputs are cut into shards (`--shard-bytes` of a JSON-lines file, one compressed file,
one Parquet row group); workers tokenize shards into `{PREFIX}.partial/`, and the shards
are merged in input order, so the output bytes do not depend on `--workers`. Killed at
any point, the same command resumes: finished shards are kept, and the final names only
ever hold complete files. Run with other settings (tokenizer, keys, --append-eod, dtype,
--strict) over an unfinished run it stops with an error; `--overwrite` discards the old
run. Once complete, the same command reports the output as up to date.

Records that are not UTF-8, not JSON objects, lack the key (or hold a non-string or an
empty string) are skipped and counted, with the first locations shown; `--strict` stops
at the first one instead. Flags shared with Megatron-LM's `tools/preprocess_data.py`
mean the same (`--input --output-prefix --json-keys --append-eod --workers
--tokenizer-type --tokenizer-model --tokenizer-hf-include-special-tokens`). With the same
tokenizer both write the same bytes (bench/data_prep.py checks), except that
preprocess_data.py stops at a bad record and keeps a text with no tokens as an empty
document, where this command skips it.

Exit status: 0 done, 2 bad arguments or data (one `error:` line), 130 interrupted.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import fcntl
import hashlib
import json
import multiprocessing as mp
import os
import queue as queue_mod
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

from pap.errors import PapError

from data_prep import worker
from data_prep.index import read_sidecar, sidecar_path
from data_prep.readers import REASONS
from data_prep.report import Progress, duration, human, human_bytes
from data_prep.shards import PARQUET, Shard, auto_shard_bytes, expand_inputs, parse_size, plan_shards
from data_prep.tokenizer_loader import ENCODERS, MEGATRON_TYPES, TokenizerSpec, limit_threads, resolve
from data_prep.writer import dtype_name, merge, token_dtype, write_json_atomic

SETTINGS_VERSION = 1
SHOW_EXAMPLES = 3


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m data_prep.tokenize", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", nargs="+", required=True, metavar="PATH_OR_GLOB",
                   help="input files, globs (quote them) or directories, taken in the order given")
    p.add_argument("--output-prefix", required=True, metavar="PREFIX", help="outputs are {PREFIX}_{key}_document.bin/.idx/.meta.json")
    p.add_argument("--tokenizer", "--tokenizer-model", dest="tokenizer", required=True, metavar="DIR_OR_FILE",
                   help="Hugging Face tokenizer directory or tokenizer.json, or a SentencePiece .model")
    p.add_argument("--tokenizer-type", choices=sorted(MEGATRON_TYPES), metavar="TYPE",
                   help=f"optional, as in Megatron-LM ({', '.join(sorted(MEGATRON_TYPES))}); checked against the files")
    p.add_argument("--json-keys", nargs="+", default=["text"], metavar="KEY",
                   help="fields (JSON keys or Parquet columns) to tokenize, one output each (default: text)")
    p.add_argument("--append-eod", action="store_true", help="end every document with the end-of-document token")
    p.add_argument("--eod-token", help="end-of-document token (default: the tokenizer's eos_token)")
    p.add_argument("--tokenizer-hf-include-special-tokens", action="store_true",
                   help="let a Hugging Face tokenizer add its template tokens (e.g. BOS) to each document")
    p.add_argument("--encoder", default="auto", choices=list(ENCODERS),
                   help="auto: for a byte-level BPE, split and cache words here and ask the library only for "
                        "new ones (the same ids, several times faster; data_prep/bytelevel.py); library: "
                        "the tokenizer library encodes every text")
    p.add_argument("--dtype", default="auto", choices=["auto", "uint16", "int32"],
                   help="token dtype (auto: uint16 when the vocabulary has < 65,500 ids, as Megatron)")
    p.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)), metavar="N",
                   help="worker processes, one tokenizer thread each (default: all cores)")
    p.add_argument("--shard-bytes", default="auto", metavar="SIZE",
                   help="split plain JSON-lines files every SIZE bytes, e.g. 64M (default auto: about 1,000 "
                        "shards in all, 1M to 128M each)")
    p.add_argument("--strict", action="store_true", help="stop at the first bad record instead of skipping it")
    p.add_argument("--overwrite", action="store_true",
                   help="replace outputs, or an unfinished run, made with other inputs or settings")
    p.add_argument("--progress-interval", type=float, default=2.0, metavar="SECONDS",
                   help="seconds between progress lines on stderr (default 2)")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except PapError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ntokenize: interrupted; run the same command again to resume", file=sys.stderr)
        return 130


def _check_args(args) -> None:
    if args.workers < 1:
        raise PapError(f"--workers {args.workers}: must be at least 1")
    for key in args.json_keys:
        if not key or key != key.strip() or "/" in key or os.sep in key:
            raise PapError(f"--json-keys {key!r}: a key becomes part of the output file name; "
                           f"use one without slashes or surrounding spaces")
    if len(set(args.json_keys)) != len(args.json_keys):
        raise PapError("--json-keys: each key once")


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


class RunDir:
    """`{PREFIX}.partial/`: the shards of an unfinished run, its settings, and a lock."""

    def __init__(self, path: Path):
        self.path = path
        self.lock_fd: Optional[int] = None

    def open(self, settings: dict, overwrite: bool) -> None:
        """Create or reopen the directory; settings must match an existing one (unless overwrite)."""
        self.path.mkdir(parents=True, exist_ok=True)
        self._lock()
        path = self.path / "settings.json"
        if path.is_file():
            try:
                old = json.loads(path.read_text())
            except ValueError:
                old = {}
            if old != settings:
                if not overwrite:
                    self.close()
                    diff = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
                    raise PapError(f"{self.path} holds an unfinished run with other settings ({', '.join(diff)}); "
                                   f"rerun with its settings to resume it, or add --overwrite to discard it")
                self.close()
                shutil.rmtree(self.path)
                return self.open(settings, overwrite=False)
        else:
            write_json_atomic(path, settings)

    def _lock(self) -> None:
        self.lock_fd = os.open(self.path / "lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self.close()
            raise PapError(f"{self.path} is in use by another data_prep.tokenize run") from None

    def close(self) -> None:
        """Release the lock (the directory stays for a rerun)."""
        if self.lock_fd is not None:
            os.close(self.lock_fd)
            self.lock_fd = None

    def remove(self) -> None:
        self.close()
        shutil.rmtree(self.path, ignore_errors=True)


@dataclass
class Plan:
    """What a run will do, worked out (and checked) before any work starts."""

    spec: TokenizerSpec
    dtype: type
    keys: tuple
    files: List[str]
    shards: List[Shard]
    settings: dict  # must match to resume an unfinished run
    fingerprint: str  # settings + input files: recorded in the sidecars, tells an up-to-date output
    outputs: Dict[str, str]  # key -> dataset prefix


def make_plan(args) -> Plan:
    """Check the arguments, the tokenizer and the inputs; raises `PapError` for anything wrong."""
    _check_args(args)
    spec = resolve(args.tokenizer, args.tokenizer_type, args.eod_token, args.tokenizer_hf_include_special_tokens,
                   args.encoder)
    if args.append_eod and spec.eod is None:
        raise PapError(f"--append-eod: {spec.path} names no end-of-document token; give one with --eod-token")
    dtype = token_dtype(spec.vocab_size, args.dtype)
    keys = tuple(args.json_keys)
    files = expand_inputs(args.input)
    shard_bytes = auto_shard_bytes(files) if args.shard_bytes == "auto" else parse_size(args.shard_bytes)
    shards = plan_shards(files, shard_bytes, keys)
    settings = {"version": SETTINGS_VERSION, "json_keys": list(keys), "tokenizer": spec.kind,
                "tokenizer_sha256": spec.digest, "add_special_tokens": spec.add_special_tokens,
                "append_eod": args.append_eod, "eod": spec.eod if args.append_eod else None,
                "dtype": dtype_name(dtype), "strict": args.strict}
    inputs = [[os.path.abspath(f), os.path.getsize(f), os.stat(f).st_mtime_ns] for f in files]
    fingerprint = _digest({"settings": settings, "inputs": inputs})
    outputs = {key: f"{args.output_prefix}_{key}_document" for key in keys}
    return Plan(spec, dtype, keys, files, shards, settings, fingerprint, outputs)


def run(args) -> int:
    """The command, after argument parsing; raises `PapError` for anything the user can fix."""
    started = time.time()
    limit_threads()
    plan = make_plan(args)
    run_dir = RunDir(Path(args.output_prefix + ".partial"))
    Path(args.output_prefix).parent.mkdir(parents=True, exist_ok=True)
    if not run_dir.path.exists() and _outputs_present(plan.outputs):
        if _up_to_date(plan.outputs, plan.fingerprint):
            print(f"tokenize: {', '.join(o + '.bin' for o in plan.outputs.values())} up to date "
                  f"(same inputs and settings); nothing to do")
            return 0
        if not args.overwrite:
            raise PapError(f"{next(iter(plan.outputs.values()))}.bin exists, made from other inputs or settings; "
                           f"add --overwrite to replace it")
    run_dir.open(plan.settings, args.overwrite)
    try:
        return _tokenize(args, plan, run_dir, started)
    finally:
        run_dir.close()


def _no_records(files) -> str:
    """Why no document came out of `files`, naming them (the first few) and the empty ones."""
    files = [str(f) for f in files]
    empty = [f for f in files if os.path.getsize(f) == 0]
    if empty and len(empty) == len(files):
        named = ", ".join(empty[:3]) + (f" and {len(empty) - 3} more" if len(empty) > 3 else "")
        return f"{named} {'is' if len(empty) == 1 else 'are'} empty (0 bytes); give a file with records"
    named = ", ".join(files[:3]) + (f" and {len(files) - 3} more" if len(files) > 3 else "")
    return f"{named} hold{'s' if len(files) == 1 else ''} no records (only blank lines)"


def _tokenize(args, plan: Plan, run_dir: RunDir, started: float) -> int:
    """Tokenize the shards not done yet, merge all of them in order, move the results into place."""
    shards, keys = plan.shards, plan.keys
    job = worker.Job(workdir=str(run_dir.path), keys=keys, tokenizer=plan.spec, append_eod=args.append_eod,
                     dtype=plan.dtype, strict=args.strict)
    markers = {s.index: m for s in shards if (m := worker.read_marker(job.workdir, s)) is not None}
    pending = [s for s in shards if s.index not in markers]
    total_bytes = sum(os.path.getsize(f) for f in plan.files)
    workers = max(1, min(args.workers, len(pending)))
    print(f"tokenize: {len(plan.files)} file(s), {human_bytes(total_bytes)}, {len(shards)} shard(s)"
          f"{f', {len(markers)} already done' if markers else ''}; {plan.spec.describe()}; "
          f"{dtype_name(plan.dtype)}; {workers} worker(s)", file=sys.stderr, flush=True)

    progress = Progress(sum(s.units for s in shards), len(shards), sum(s.units for s in shards if s.index in markers),
                        len(markers), interval=args.progress_interval)
    work_started = time.time()
    new = _execute(job, pending, workers, progress, run_dir.lock_fd)
    work_seconds = time.time() - work_started
    progress.maybe_print(force=bool(pending))
    progress.finish()
    markers.update(new)

    totals = _totals(shards, markers, keys)
    for key in keys:
        if totals[key]["documents"] == 0:
            reasons = _skip_text(totals[key]["skipped"]) or _no_records(plan.files)
            raise PapError(f"no documents for {key!r}: {reasons}{_first_example(totals[key]['examples'])}")
    for key in keys:
        merge([worker.shard_prefix(job.workdir, s.index, key) for s in shards],
              str(run_dir.path / f"merged_{key}"), plan.dtype)
    # Everything is complete in the run directory: only now do the final names change. An
    # older output loses its index first, so a reader never pairs an old .idx with a new .bin.
    metas = {}
    for key, out in plan.outputs.items():
        merged = str(run_dir.path / f"merged_{key}")
        for suffix in (".idx", ".meta.json"):
            Path(out + suffix).unlink(missing_ok=True)
        os.replace(merged + ".bin", out + ".bin")
        os.replace(merged + ".idx", out + ".idx")
        metas[key] = _sidecar(out, key, plan, args, totals[key], total_bytes)
        write_json_atomic(sidecar_path(out), metas[key])
    run_dir.remove()
    _print_summary(plan, totals, metas, total_bytes, new, workers, work_seconds, time.time() - started)
    return 0


def _outputs_present(outputs: Dict[str, str]) -> bool:
    return any(os.path.exists(o + s) for o in outputs.values() for s in (".bin", ".idx", ".meta.json"))


def _up_to_date(outputs: Dict[str, str], fingerprint: str) -> bool:
    for out in outputs.values():
        if not (os.path.isfile(out + ".bin") and os.path.isfile(out + ".idx")):
            return False
        try:
            meta = read_sidecar(out)
        except PapError:
            return False
        if not meta or meta.get("fingerprint") != fingerprint:
            return False
    return True


def _execute(job: worker.Job, pending: List[Shard], workers: int, progress: Progress,
             lock_fd: Optional[int]) -> Dict[int, dict]:
    """Run the pending shards on `workers` processes; returns their done markers."""
    if not pending:
        return {}
    # fork: workers start at once with the imported modules and the parsed arguments.
    ctx = mp.get_context("fork")
    updates, abort = ctx.Queue(), ctx.Event()
    results: Dict[int, dict] = {}
    pool = cf.ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=worker.init,
                                  initargs=(job, updates, abort, lock_fd))
    try:
        futures = {pool.submit(worker.run_shard, s): s for s in pending}
        waiting = set(futures)
        while waiting:
            done, waiting = cf.wait(waiting, timeout=0.25, return_when=cf.FIRST_COMPLETED)
            _drain(updates, progress)
            for fut in done:
                try:
                    results[futures[fut].index] = fut.result()
                except cf.process.BrokenProcessPool:
                    raise PapError("a worker process died (out of memory?); run the same command again "
                                   "to resume") from None
                progress.shard_done()
            progress.maybe_print()
    except BaseException:
        abort.set()  # running shards stop at their next batch
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    _drain(updates, progress)
    return results


def _drain(updates, progress: Progress) -> None:
    while True:
        try:
            progress.add(*updates.get_nowait())
        except queue_mod.Empty:
            return


def _totals(shards: List[Shard], markers: Dict[int, dict], keys) -> Dict[str, dict]:
    """Per key: documents, tokens, skips by reason, and skip examples with file:line locations."""
    totals = {k: {"documents": 0, "tokens": 0, "skipped": {}, "examples": []} for k in keys}
    lines_before: Dict[str, int] = {}  # lines of each file in the shards seen so far
    for shard in shards:
        marker = markers[shard.index]
        offset = shard.first_line if shard.kind == PARQUET else lines_before.get(shard.path, 0)
        lines_before[shard.path] = lines_before.get(shard.path, 0) + marker["lines"]
        for key in keys:
            out, t = marker["outputs"][key], totals[key]
            t["documents"] += out["documents"]
            t["tokens"] += out["tokens"]
            for reason, n in out["skipped"].items():
                t["skipped"][reason] = t["skipped"].get(reason, 0) + n
        for key, reason, line, detail in marker["examples"]:
            examples = totals[key]["examples"]
            if sum(1 for e in examples if e[0] == reason) < SHOW_EXAMPLES:
                examples.append((reason, shard.location(line, offset), detail))
    return totals


def _skip_text(skipped: Dict[str, int]) -> str:
    order = {r: i for i, r in enumerate(REASONS)}
    parts = [f"{n:,} {r}" for r, n in sorted(skipped.items(), key=lambda x: order.get(x[0], 99))]
    return f"{sum(skipped.values()):,} skipped ({', '.join(parts)})" if parts else ""


def _first_example(examples) -> str:
    return f"; first at {examples[0][1]}: {examples[0][2]}" if examples else ""


def _tokenizer_ref(spec: TokenizerSpec, out: str) -> str:
    """The tokenizer path as the sidecar records it: relative when it lives beside the data."""
    path = os.path.abspath(spec.given)
    here = os.path.dirname(os.path.abspath(out))
    return os.path.relpath(path, here) if path.startswith(here + os.sep) else path


def _sidecar(out: str, key: str, plan: Plan, args, total: dict, total_bytes: int) -> dict:
    spec = plan.spec
    return {
        "vocab_size": spec.vocab_size,
        "eod": spec.eod if args.append_eod else None,
        "eod_token": spec.eod_token if args.append_eod else None,
        "documents": total["documents"],
        "tokens": total["tokens"],
        "dtype": dtype_name(plan.dtype),
        "tokenizer": _tokenizer_ref(spec, out),
        "tokenizer_type": spec.kind,
        "tokenizer_sha256": spec.digest,
        "add_special_tokens": spec.add_special_tokens,
        "json_key": key,
        "skipped": total["skipped"],
        "inputs": list(args.input),
        "input_files": len(plan.files),
        "input_bytes": total_bytes,
        "fingerprint": plan.fingerprint,
        "made_by": "python -m data_prep.tokenize",
    }


def _print_summary(plan: Plan, totals, metas, total_bytes, new: Dict[int, dict], workers: int,
                   work_seconds: float, seconds: float) -> None:
    outputs, files, num_shards = plan.outputs, plan.files, len(plan.shards)
    reused = num_shards - len(new)
    print(f"tokenize: done in {seconds:.1f} s ({duration(seconds)}) with {workers} worker(s)"
          f"{f'; {reused} of {num_shards} shards reused from an earlier run' if reused else ''}")
    first = totals[next(iter(totals))]
    records = first["documents"] + sum(first["skipped"].values())
    print(f"  input    {len(files)} file(s), {human_bytes(total_bytes)}, {records:,} records")
    for key, out in outputs.items():
        t = totals[key]
        size = os.path.getsize(out + ".bin") + os.path.getsize(out + ".idx")
        print(f"  {key:<8} {t['documents']:,} docs, {t['tokens']:,} tokens ({metas[key]['dtype']}) -> "
              f"{out}.bin/.idx, {human_bytes(size)}")
        if t["skipped"]:
            print(f"  {'':<8} {_skip_text(t['skipped'])}")
            for reason, where, detail in t["examples"]:
                print(f"  {'':<8}   {where}: {reason}: {detail}")
    docs = sum(o["documents"] for m in new.values() for o in m["outputs"].values())
    tokens = sum(o["tokens"] for m in new.values() for o in m["outputs"].values())
    if new and work_seconds > 0:
        print(f"  speed    {human(docs / work_seconds)} docs/s, {human(tokens / work_seconds)} tokens/s, "
              f"{human(tokens / work_seconds / workers)} tokens/s per worker ({work_seconds:.1f} s tokenizing)")
    if new and plan.spec.fast is not None:
        library = sum(m.get("library_texts", 0) for m in new.values())
        print(f"  encoder  word cache; {library:,} of the {docs:,} documents went to the tokenizer library "
              f"(an added token or a rare character in them)")


if __name__ == "__main__":
    sys.exit(main())
