"""Evaluate pap models.

    # the paper's seven tasks through lm-evaluation-harness, source and pruned side by side
    python -m pap.eval harness --model hf/smollm-1.7b --model runs/pap_469m --tokenizer hf/smollm-1.7b
    # local task YAMLs, a few examples each, table also written as JSON + Markdown
    python -m pap.eval harness --model runs/tiny_pap/hf --include-path my_tasks --tasks my_task --limit 50 \\
        --output runs/tiny_pap/eval/my_task.json
    # validation loss and perplexity on Megatron data, at any layout
    torchrun --nproc-per-node 4 -m pap.eval loss --ckpt runs/tiny_pap --data data/embedded/stdlib_text_document \\
        --tp 2 --pp 2

`--model` takes a Hugging Face export (plain Llama or pap's remote code) or a pap checkpoint
(exported to a temporary directory with --tokenizer, removed afterwards). Bad input (a path
that is neither, an unknown task, data the model cannot embed) prints one `error:` line
and exits with status 2.
"""

from __future__ import annotations

import argparse
import os
import sys

from pap.errors import PapError, describe_os_error


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pap.eval", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    harness = sub.add_parser("harness", help="benchmark accuracy through lm-evaluation-harness")
    harness.add_argument("--model", required=True, nargs="+", action="extend", metavar="PATH",
                         help="HF export or pap checkpoint; several (or --model again) print side by side")
    harness.add_argument("--tasks", help="comma-separated lm-eval tasks, each optionally task:metric "
                                         "(default: arc_easy,arc_challenge,boolq,hellaswag,openbookqa,piqa,winogrande)")
    harness.add_argument("--include-path", metavar="DIR", help="folder of local lm-eval task YAMLs")
    harness.add_argument("--batch-size", type=int, default=8, metavar="N")
    harness.add_argument("--limit", type=int, metavar="N", help="first N examples of each task (quick checks only)")
    harness.add_argument("--output", metavar="FILE", help="write lm-eval's full JSON here and the table as FILE.md")
    harness.add_argument("--log-samples", action="store_true", help="put every example's scores in --output")
    harness.add_argument("--tokenizer", metavar="DIR", help="tokenizer to export pap checkpoints with")
    harness.add_argument("--device", help="torch device (default: cuda when available, else cpu)")
    harness.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                         help="weights' dtype for evaluation (auto: the export's)")
    example = sub.add_parser("example-task", help="write a small local task for the demo models")
    example.add_argument("--out", required=True, metavar="DIR", help="folder for the task YAML and its data")
    example.add_argument("--examples", type=int, default=200, metavar="N")
    loss = sub.add_parser("loss", help="validation loss and perplexity on Megatron .bin/.idx data")
    loss.add_argument("--ckpt", required=True, help="pap checkpoint (root or one iter_* directory)")
    loss.add_argument("--data", required=True, nargs="+", metavar="PREFIX_OR_BLEND",
                      help="dataset prefix, or a blend: W1 PREFIX1 W2 PREFIX2 ...")
    loss.add_argument("--tokens", type=int, default=65536, metavar="N",
                      help="tokens to score, rounded up to whole samples (default 65536)")
    loss.add_argument("--tp", type=int, default=1)
    loss.add_argument("--pp", type=int, default=1)
    loss.add_argument("--seq-length", type=int, help="tokens per sample (default: the checkpoint's training value)")
    loss.add_argument("--micro-batch-size", type=int, default=4)
    loss.add_argument("--split", default="0,1,0",
                      help="train,valid,test parts; the valid part is scored (default: all of the data; "
                           "the training run's split, e.g. 98,2,0, gives its validation samples)")
    loss.add_argument("--seed", type=int, default=1234, help="sample order seed (training's train.seed: 1234)")
    for command in (harness, loss):
        command.add_argument("--no-verify", action="store_true",
                             help="read a checkpoint that fails its checksums anyway (one line says so)")
    return parser


def _harness(args) -> None:
    # Each subcommand imports what it runs: lm-eval and megatron-core are heavy.
    from pap.eval import harness
    from pap.eval.table import parse_task, render

    tasks = [t for t in args.tasks.split(",") if t.strip()] if args.tasks else None
    if args.batch_size < 1 or (args.limit is not None and args.limit < 1):
        raise PapError("--batch-size and --limit must be positive")
    results = harness.run(args.model, tasks, args.include_path, args.batch_size, args.limit, args.tokenizer,
                          args.device, args.dtype, args.log_samples)
    columns = [parse_task(t) for t in (tasks or harness.default_tasks())]
    print(render(results, columns), end="", flush=True)
    if args.output:
        written = harness.write_outputs(results, columns, args.output)
        print(f"wrote {' and '.join(map(str, written))}", flush=True)


def _loss(args) -> None:
    from pap.eval import loss  # megatron-core (heavy): only for this subcommand

    rank0 = int(os.environ.get("RANK", "0")) == 0

    def report(line: str) -> None:
        if rank0:
            print(line, flush=True)

    result = loss.evaluate(args.ckpt, args.data, args.tokens, args.tp, args.pp, args.seq_length,
                           args.micro_batch_size, args.split, args.seed, report=report)
    report(f"scored {result.tokens:,} tokens in {result.samples} samples")
    report(f"loss {result.loss:.6f} ppl {result.perplexity:.4f}")


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    import warnings

    warnings.filterwarnings("ignore")
    rank = int(os.environ.get("RANK", "0"))
    if getattr(args, "no_verify", False):
        from pap.checkpoint import NO_VERIFY_ENV  # torch: loaded only past argument parsing

        os.environ[NO_VERIFY_ENV] = "1"  # what every checkpoint reader of this process consults
    try:
        if args.command == "harness":
            _harness(args)
        elif args.command == "example-task":
            from pap.eval import example_task  # deferred like the subcommands' imports

            print(f"wrote {example_task.write(args.out, args.examples)} (task {example_task.TASK})", flush=True)
        else:
            _loss(args)
    except (PapError, OSError) as exc:
        if rank == 0:  # every rank reaches the same verdict; one line is enough
            message = describe_os_error(exc) if isinstance(exc, OSError) else str(exc)
            print(f"error: {message}", file=sys.stderr, flush=True)
        return 2
    finally:
        if args.command == "loss":
            from pap.distributed import shutdown  # megatron-core: loaded only by `loss`

            shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
