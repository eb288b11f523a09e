"""Convert between Hugging Face Llama checkpoints and pap (megatron-core) checkpoints.

    # HF -> pap; the result loads at any TP/PP that divides the model
    python -m pap.convert hf-to-mcore --hf path/to/SmolLM-1.7B --out ckpt/smollm-1.7b --tp 2 --pp 1
    # pap (dense or pruned, saved at any TP/PP) -> HF
    python -m pap.convert mcore-to-hf --ckpt runs/pap_469m --out hf/pap-469m --tokenizer path/to/SmolLM-1.7B
    # the same as a plain LlamaForCausalLM (KV heads duplicated, shapes zero-padded; exact)
    python -m pap.convert mcore-to-hf --ckpt runs/pap_469m --out hf/pap-469m-llama --expand-kv

Start a pruning-aware run from the converted weights with `checkpoint.init_from=ckpt/smollm-1.7b`.
Uniform shapes export as `LlamaForCausalLM`; per-layer shapes, cluster attention, or a
hidden size that is not a multiple of the heads (which transformers rejects for Llama)
export with pap's remote code (`trust_remote_code=True`). Errors print one `error:` line,
exit 2 and leave nothing under the output name. An existing `--out` is refused unless it is
empty, or an earlier pap output and `--overwrite` is given; an `--out` overlapping an input
is always refused: nothing pap did not write is ever deleted.
"""

from __future__ import annotations

import argparse
import os
import sys

from pap.errors import PapError, describe_os_error


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="pap.convert", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    to_mcore = sub.add_parser("hf-to-mcore", help="Hugging Face Llama directory -> pap checkpoint")
    to_mcore.add_argument("--hf", required=True, help="HF model directory (config.json + safetensors)")
    to_mcore.add_argument("--out", required=True, help="pap checkpoint directory to create")
    to_mcore.add_argument("--tp", type=int, default=1, help="tensor-parallel size the model must divide into")
    to_mcore.add_argument("--pp", type=int, default=1, help="pipeline-parallel size the model must divide into")
    to_mcore.add_argument("--overwrite", action="store_true", help="replace an earlier pap checkpoint at --out")
    to_hf = sub.add_parser("mcore-to-hf", help="pap checkpoint -> Hugging Face directory")
    to_hf.add_argument("--ckpt", required=True, help="pap checkpoint directory (root or one iter_* dir)")
    to_hf.add_argument("--out", required=True, help="HF model directory to create")
    to_hf.add_argument("--tokenizer", help="tokenizer directory or file to copy alongside")
    to_hf.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    to_hf.add_argument("--expand-kv", action="store_true",
                       help="write a plain LlamaForCausalLM: one KV head per query head, shapes zero-padded")
    to_hf.add_argument("--format", default="auto", choices=["auto", "llama", "pap_llama", "nemotron_nas"],
                       help="the Hugging Face class written (docs/CONVERSION.md): llama (uniform models), pap_llama "
                            "(pap's remote code, any shape), nemotron_nas (DeciLM, any shape padded, what vLLM "
                            "serves); auto: llama when it fits, else pap_llama")
    to_hf.add_argument("--overwrite", action="store_true", help="replace an earlier pap export at --out")
    to_hf.add_argument("--no-verify", action="store_true",
                       help="export a checkpoint that fails its checksums anyway (one line says so)")
    args = parser.parse_args(argv)

    import warnings

    warnings.filterwarnings("ignore")
    # torch loads only after the arguments parse, so `--help` and usage errors answer at once
    from pap.distributed import shutdown
    from pap.hf import convert

    try:
        if args.command == "hf-to-mcore":
            convert.hf_to_mcore(args.hf, args.out, args.tp, args.pp, overwrite=args.overwrite)
        else:
            from pap import checkpoint  # loaded with torch, like the converter above

            if args.no_verify:
                os.environ[checkpoint.NO_VERIFY_ENV] = "1"
            checkpoint.read_verified(args.ckpt, "--no-verify")  # its files, as a resume checks them
            convert.mcore_to_hf(args.ckpt, args.out, args.tokenizer, args.dtype, args.expand_kv,
                                overwrite=args.overwrite, family=None if args.format == "auto" else args.format)
    except PapError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2
    except OSError as exc:  # a write the system refused: full disk, read-only filesystem, ...
        print(f"error: {describe_os_error(exc)}", file=sys.stderr, flush=True)
        return 2
    finally:
        shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
