"""Tokenization throughput of data_prep.tokenize, and of Megatron-LM's preprocess_data.py beside it.

    .venv/bin/python bench/data_prep.py                       # ours, --workers 1 and 2
    .venv/bin/python bench/data_prep.py --megatron-lm /tmp/megatron-lm --megatron-python /tmp/mlm-venv/bin/python
    .venv/bin/python bench/data_prep.py --library-encoder  # also ours with --encoder library

Makes its own corpus (default 100 MB of JSON lines: this interpreter's standard-library
source and docstrings, cut into documents of 200 to 8,000 characters, reshuffled and
recut on every pass so documents differ) and trains a GPT-2-style byte-level BPE of
50,257 ids on a 20 MB sample with the `tokenizers` library; both are cached in `--work`.
Every tool then tokenizes the same corpus with `--append-eod` at each `--workers` count.

Reported per run: wall seconds (process start to exit), the fixed start-up cost (the same
command on a one-document input: imports, pool start), tokens/s on wall time, tokens/s
per worker, and tokens per CPU-second (user + system time of the command and all its
processes: the honest per-core figure, since preprocess_data.py also keeps its main
process busy). With Megatron-LM given, its outputs are compared byte for byte with ours.
The table is printed as Markdown with the command, the machine and the date, and the
1-minute load average before and after each run: on a shared machine, a load before the
run well above 0 means other programs took cores from it.
"""

from __future__ import annotations

import argparse
import ast
import datetime
import json
import os
import platform
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from data_prep.index import read_index  # noqa: E402  (after the path set-up above)

VOCAB = 50257
EOD = "<|endoftext|>"
NON_ASCII_NOTE = '; every document ends with " naïve café"'


def _pieces(source: str, rng: random.Random):
    """Documents from one source file: its docstrings, then the code cut at random sizes."""
    try:
        tree = ast.parse(source)
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc and len(doc) > 80:
                    yield doc
    except (SyntaxError, ValueError):
        pass
    pos = 0
    while pos < len(source):
        size = rng.randint(200, 8000)
        yield source[pos:pos + size]
        pos += size


def make_corpus(path: Path, size_mb: float) -> dict:
    """Write >= size_mb MB of {"text": ...} lines; returns counts."""
    from data_prep.embedded_corpus import read_documents, stdlib_files

    sources = read_documents(stdlib_files())
    rng = random.Random(0)
    target, written, docs = int(size_mb * 1e6), 0, 0
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        while written < target:
            order = sources[:]
            rng.shuffle(order)
            for source in order:
                for text in _pieces(source, rng):
                    line = json.dumps({"text": text}) + "\n"
                    f.write(line)
                    written += len(line.encode())
                    docs += 1
                if written >= target:
                    break
    os.replace(tmp, path)
    return {"bytes": written, "documents": docs}


def train_tokenizer(corpus: Path, out_dir: Path, sample_mb: float = 20) -> None:
    """GPT-2-style byte-level BPE (50,257 ids) as a Hugging Face tokenizer directory."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    texts, size = [], 0
    with open(corpus, encoding="utf-8") as f:
        for line in f:
            texts.append(json.loads(line)["text"])
            size += len(line)
            if size > sample_mb * 1e6:
                break
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=[EOD], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
    out_dir.mkdir(parents=True, exist_ok=True)
    tok.save(str(out_dir / "tokenizer.json"))
    (out_dir / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": EOD, "eos_token": EOD, "unk_token": EOD,
        "model_max_length": 1 << 30}, indent=1))


def with_non_ascii(corpus: Path, out: Path) -> Path:
    """`corpus` with " naïve café" ending every document: no text takes the ASCII fast split."""
    if not out.is_file() or out.stat().st_mtime < corpus.stat().st_mtime:
        tmp = out.with_suffix(".tmp")
        with open(corpus, encoding="utf-8") as f, open(tmp, "w", encoding="utf-8") as g:
            for line in f:
                g.write(json.dumps({"text": json.loads(line)["text"] + " naïve café"}) + "\n")
        os.replace(tmp, out)
    return out


def timed(cmd, cwd, env, log: Path) -> tuple:
    """Run a command; returns (wall seconds, CPU seconds of it and all its processes)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.run(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        sys.exit(f"failed ({proc.returncode}): {' '.join(map(str, cmd))}\n{log.read_text()[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def remove(prefix: str) -> None:
    for suffix in (".bin", ".idx", ".meta.json"):
        Path(prefix + suffix).unlink(missing_ok=True)


class Tool:
    """How to run one tokenizer program on an input."""

    def __init__(self, name, python, cwd, env, script, tag, encoder=None):
        self.name, self.python, self.cwd, self.env, self.script = name, python, cwd, env, script
        self.tag, self.encoder = tag, encoder

    def command(self, corpus, prefix, tokenizer, workers):
        if self.script is None:
            return [self.python, "-m", "data_prep.tokenize", "--input", corpus, "--output-prefix", prefix,
                    "--tokenizer", tokenizer, "--append-eod", "--workers", str(workers), "--encoder", self.encoder]
        return [self.python, self.script, "--input", corpus, "--output-prefix", prefix,
                "--tokenizer-type", "HuggingFaceTokenizer", "--tokenizer-model", tokenizer,
                "--append-eod", "--workers", str(workers)]


def machine() -> str:
    model = ""
    try:
        model = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (f"{len(os.sched_getaffinity(0))} cores ({model or platform.processor()}), Python "
            f"{platform.python_version()}, {platform.system()} {platform.release()}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", default="/tmp/pap_data_prep_bench", help="corpus, tokenizer and outputs go here")
    p.add_argument("--size-mb", type=float, default=100.0)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--megatron-lm", help="a Megatron-LM checkout (tag core_v0.16.1) to compare with")
    p.add_argument("--megatron-python", default=sys.executable, help="python that can run its tools/")
    p.add_argument("--non-ascii", action="store_true",
                   help="tokenize a copy of the corpus with a non-ASCII word in every document (the slower "
                        "Unicode split for every text)")
    p.add_argument("--library-encoder", action="store_true",
                   help="also run data_prep.tokenize with --encoder library (the tokenizers library encodes every text)")
    p.add_argument("--repeat", type=int, default=1, help="runs per tool and worker count; the fastest is kept "
                   "(other programs on a shared machine only ever slow a run down)")
    args = p.parse_args(argv)

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    corpus, tokenizer = work / "corpus.jsonl", work / "gpt2style-bpe"
    info_path = work / "corpus.json"
    info = json.loads(info_path.read_text()) if info_path.is_file() else {}
    if not corpus.is_file() or info.get("size_mb") != args.size_mb:
        t = time.time()
        info = {**make_corpus(corpus, args.size_mb), "size_mb": args.size_mb}
        info_path.write_text(json.dumps(info))
        print(f"corpus: {info['bytes'] / 1e6:.1f} MB, {info['documents']:,} documents ({time.time() - t:.0f} s)")
    if not (tokenizer / "tokenizer.json").is_file():
        t = time.time()
        train_tokenizer(corpus, tokenizer)
        print(f"tokenizer: byte-level BPE, {VOCAB:,} ids ({time.time() - t:.0f} s)")
    if args.non_ascii:
        corpus = with_non_ascii(corpus, work / "corpus_non_ascii.jsonl")
    tiny = work / "tiny.jsonl"
    tiny.write_text(json.dumps({"text": "def f():\n    return 1\n"}) + "\n")

    tools = [Tool("data_prep.tokenize", sys.executable, REPO, dict(os.environ), None, "ours", "auto")]
    if args.library_encoder:
        tools.append(Tool("data_prep.tokenize --encoder library", sys.executable, REPO, dict(os.environ), None,
                          "ourslib", "library"))
    if args.megatron_lm:
        mlm = Path(args.megatron_lm).resolve()
        env = dict(os.environ, PYTHONPATH=str(mlm), PYTHONWARNINGS="ignore")
        tools.append(Tool("Megatron-LM preprocess_data.py", args.megatron_python, mlm, env,
                          str(mlm / "tools" / "preprocess_data.py"), "mlm"))

    rows, outputs = [], {}
    for workers in args.workers:
        for tool in tools:
            tag = tool.tag
            prefix = str(work / f"{tag}_w{workers}")
            remove(prefix + "_text_document")
            remove(prefix + "_tiny_text_document")
            startup, _ = timed(tool.command(str(tiny), prefix + "_tiny", str(tokenizer), workers), tool.cwd,
                               tool.env, work / f"{tag}_w{workers}_tiny.log")
            cmd = tool.command(str(corpus), prefix, str(tokenizer), workers)
            best = None
            for _ in range(args.repeat):
                remove(prefix + "_text_document")
                load = os.getloadavg()[0]
                wall, cpu = timed(cmd, tool.cwd, tool.env, work / f"{tag}_w{workers}.log")
                if best is None or wall < best[0]:
                    best = (wall, cpu, load, os.getloadavg()[0])
            wall, cpu, load, load_after = best
            dataset = prefix + "_text_document"
            tokens = read_index(dataset).num_tokens
            outputs[(tag, workers)] = Path(dataset + ".bin").read_bytes() + Path(dataset + ".idx").read_bytes()
            rows.append(dict(tool=tool.name, workers=workers, wall=wall, startup=startup, tokens=tokens,
                             cpu=cpu, load=load, load_after=load_after, cmd=" ".join(str(c) for c in cmd)))
            print(f"{tool.name} --workers {workers}: {wall:.1f} s wall, {tokens / wall:,.0f} tokens/s, "
                  f"{tokens / cpu:,.0f} tokens per CPU-s", flush=True)

    same_workers = len({v for (tag, _), v in outputs.items() if tag.startswith("ours")}) == 1
    same_mlm = all(outputs[("ours", w)] == outputs[("mlm", w)] for w in args.workers) if args.megatron_lm else None
    import tokenizers

    print()
    print(f"Corpus: {info['bytes'] / 1e6:.1f} MB JSON lines, {info['documents']:,} documents "
          f"(Python {platform.python_version()} stdlib source and docstrings"
          f"{NON_ASCII_NOTE if args.non_ascii else ''}), {rows[0]['tokens']:,} tokens "
          f"with a {VOCAB:,}-id byte-level BPE (tokenizers {tokenizers.__version__}), --append-eod.  ")
    print(f"Machine: {machine()}. Date: {datetime.date.today().isoformat()}.  ")
    print(f"Command: `{' '.join([Path(sys.executable).name, 'bench/data_prep.py', *(argv or sys.argv[1:])])}`")
    print()
    print("| tool | workers | wall s | start-up s | tokens/s | tokens/s per worker | tokens/s after start-up "
          "| CPU s | tokens per CPU-s | load before/after |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        steady = r["tokens"] / max(r["wall"] - r["startup"], 1e-9)
        print(f"| {r['tool']} | {r['workers']} | {r['wall']:.1f} | {r['startup']:.1f} | {r['tokens'] / r['wall']:,.0f} "
              f"| {r['tokens'] / r['wall'] / r['workers']:,.0f} | {steady:,.0f} | {r['cpu']:.1f} "
              f"| {r['tokens'] / r['cpu']:,.0f} | {r['load']:.1f} / {r['load_after']:.1f} |")
    print()
    if len(args.workers) > 1 or args.library_encoder:
        print(f"Output bytes identical across worker counts{' and encoders' if args.library_encoder else ''}: "
              f"{'yes' if same_workers else 'NO'}.")
    if same_mlm is not None:
        print(f"Output bytes identical to Megatron-LM's: {'yes' if same_mlm else 'NO'}.")
        for w in args.workers:
            pair = [r for r in rows if r["workers"] == w and r["tool"] in (tools[0].name, tools[-1].name)]
            if len(pair) == 2:
                a, b = pair
                print(f"Speed-up at --workers {w}: {b['wall'] / a['wall']:.2f}x wall, "
                      f"{(b['wall'] - b['startup']) / max(a['wall'] - a['startup'], 1e-9):.2f}x after start-up, "
                      f"{b['cpu'] / a['cpu']:.2f}x per CPU-second.")
    return 0 if same_workers and same_mlm is not False else 1


if __name__ == "__main__":
    sys.exit(main())
