"""Train (and, with pruning configured, prune) a Llama-style GPT on megatron-core.

    # one process (CPU or one GPU)
    python -m pap.train --config configs/tiny.yaml
    # four processes, TP=2 x PP=2, with dotted overrides
    torchrun --nproc-per-node 4 -m pap.train --config configs/tiny.yaml parallel.tp=2 parallel.pp=2 train.iters=50

Resumes automatically from the newest complete checkpoint in `checkpoint.dir`.
Input errors (config, data, checkpoint) print one `error: ...` line and exit with status 2.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings

from pap.config import load_config, parse_blend
from pap.errors import PapError, describe_os_error


def _quiet_libraries() -> None:
    """Keep the console to pap's own lines: megatron warns about absent GPU-only extras."""
    import logging

    warnings.filterwarnings("ignore", module=r"megatron\..*")
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\..*")
    warnings.filterwarnings("ignore", message=r".*(apex|transformer_engine|Transformer Engine|APEX).*")
    logging.getLogger("megatron").setLevel(logging.ERROR)


def preflight(cfg) -> None:
    """Checks that need no process group: every rank reaches the same verdict."""
    # Deferred so that a config error is reported before torch and megatron-core load.
    from pap.data import check_corpus_size, check_dataset
    from pap.model import describe_implementation
    from pap.trainer import ensure_world_fits

    ensure_world_fits(cfg, int(os.environ.get("WORLD_SIZE", "1")))
    describe_implementation(cfg.model.transformer_impl)  # `te` without Transformer Engine stops here
    prefixes, _ = parse_blend(cfg.data.blend)
    for prefix in prefixes:
        check_dataset(prefix, cfg.model.vocab_size)
        check_corpus_size(cfg, prefix, cfg.train.eval_iters > 0)


def interrupted(trainer, cfg) -> str:
    """The one line for Ctrl-C: where the run stopped and whether its work is in a checkpoint."""
    if trainer is None or getattr(trainer, "progress", None) is None:
        return "interrupted (Ctrl-C) before training started; no checkpoint was written"
    from pap.checkpoint import iteration_dir  # torch: loaded only once training started

    where = f"interrupted (Ctrl-C) at iteration {trainer.iteration}"
    if not cfg.checkpoint.dir:
        return f"{where}; no checkpoint.dir: nothing was saved"
    if trainer.last_saved is None:
        return f"{where}; no checkpoint was written: the next start begins afresh"
    saved = iteration_dir(cfg.checkpoint.dir, trainer.last_saved)
    if trainer.last_saved == trainer.iteration:
        return f"{where}; checkpoint {saved} holds it: the next start resumes there"
    return (f"{where}; no checkpoint was written for it: the next start resumes from {saved} "
            f"(iteration {trainer.last_saved})")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="pap.train", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML config file (default: built-in defaults)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. parallel.tp=2 train.iters=6")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved config as YAML and exit (nothing is checked on disk)")
    args = parser.parse_args(argv)
    rank = int(os.environ.get("RANK", "0"))
    try:
        cfg = load_config(args.config, args.overrides)
        if args.print_config:
            import yaml

            print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")
            return 0
        preflight(cfg)
        _quiet_libraries()
        # megatron-core (heavy) loads here, after the config and data checks.
        from pap.distributed import shutdown
        from pap.trainer import Trainer

        trainer = None
        try:
            trainer = Trainer(cfg)
            trainer.run()
        except KeyboardInterrupt:
            if rank == 0:
                print(f"pap: {interrupted(trainer, cfg)}", file=sys.stderr, flush=True)
            return 130  # 128 + SIGINT, as a shell reports an interrupted command
        finally:
            if trainer is not None:
                trainer.close()
            shutdown()
    except KeyboardInterrupt:  # before the trainer existed
        if rank == 0:
            print("pap: interrupted (Ctrl-C) before training started; nothing was written", file=sys.stderr,
                  flush=True)
        return 130
    except (PapError, OSError) as exc:  # input problems, and reads or writes the system refused (full disk, ...)
        if rank == 0 or "RANK" not in os.environ:
            message = describe_os_error(exc) if isinstance(exc, OSError) else str(exc)
            print(f"error: {message}", file=sys.stderr, flush=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
