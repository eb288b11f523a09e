"""Does an export serve? vLLM and `transformers` load it and continue the same prompts as pap.

    python -m pap.serve_check EXPORT [--ckpt CKPT] [--prompts 4] [--tokens 32] [--no-vllm]

Greedy continuations of `--prompts` token-id prompts (drawn from the vocabulary with a
fixed seed, so no tokenizer is needed), `--tokens` each, from
* vLLM, in its own environment made on demand (`pap.serve.vllm_env`; minutes the first time);
* `transformers` on the same folder (remote code trusted when it ships any);
* pap's megatron-core model of `--ckpt`, the checkpoint the export came from.
Printed side by side; the check passes when every engine chose the same tokens and the
log-probabilities of those tokens agree within `--tolerance` (fp32). Exit status 0 when
it passes, 1 when an engine differs, 2 on bad input.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

from pap.errors import PapError, exit_status

WORKER = Path(__file__).resolve().parent / "serve" / "vllm_worker.py"


def prompts_for(vocab_size: int, count: int, length: int = 8, seed: int = 0) -> List[List[int]]:
    """`count` prompts of `length` token ids in [1, vocab_size), the same for the same seed."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    return torch.randint(1, vocab_size, (count, length), generator=generator).tolist()


def vllm_greedy(export_dir: str, prompts, steps: int, report=print):
    from pap.serve import vllm_env
    from pap.serve.greedy import Continuation

    python = vllm_env.ensure(report)
    with tempfile.TemporaryDirectory(prefix="pap-serve-") as work:
        request, result = Path(work) / "request.json", Path(work) / "result.json"
        request.write_text(json.dumps({"model": str(Path(export_dir).resolve()), "prompts": prompts,
                                       "max_tokens": steps, "dtype": "float32",
                                       "max_model_len": max(len(p) for p in prompts) + steps + 8}))
        log = Path(work) / "vllm.log"
        env = {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_LOGGING_LEVEL": "WARNING"}
        with open(log, "w") as out:
            done = subprocess.run([str(python), str(WORKER), str(request), str(result)], stdout=out,
                                  stderr=subprocess.STDOUT, env={**os.environ, **env}, cwd=work)
        if done.returncode or not result.is_file():
            tail = log.read_text().strip().splitlines()[-15:]
            raise PapError(f"serve_check: vLLM could not serve {export_dir} (status {done.returncode}):\n  "
                           + "\n  ".join(tail))
        answer = json.loads(result.read_text())
    report(f"serve_check: vLLM {answer['version']} served {export_dir}")
    return [Continuation(t, l) for t, l in zip(answer["tokens"], answer["logprobs"])]


def compare(runs: Dict[str, list], prompts, tolerance: float, report=print) -> bool:
    """Print each prompt's continuations side by side; True when every engine agrees."""
    names = list(runs)
    reference = names[0]
    ok = True
    for i, prompt in enumerate(prompts):
        report(f"prompt {i}: {prompt}")
        for name in names:
            report(f"  {name:>12}: {runs[name][i].tokens}")
        for name in names[1:]:
            same = runs[name][i].tokens == runs[reference][i].tokens
            gap = max(abs(a - b) for a, b in zip(runs[name][i].logprobs, runs[reference][i].logprobs))
            verdict = "same tokens" if same else "DIFFERENT TOKENS"
            fine = same and gap <= tolerance
            ok &= fine
            report(f"  {name} vs {reference}: {verdict}, largest log-probability difference {gap:.2e}"
                   + ("" if fine else f" (tolerance {tolerance:g})"))
    return ok


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pap.serve_check", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("export", help="a folder written by `python -m pap.convert mcore-to-hf`")
    parser.add_argument("--ckpt", help="the pap checkpoint it was exported from (adds pap's own continuations)")
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=32, help="tokens generated per prompt")
    parser.add_argument("--tolerance", type=float, default=1e-4,
                        help="largest allowed difference of a chosen token's log-probability (fp32)")
    parser.add_argument("--no-vllm", action="store_true", help="leave vLLM out (transformers and pap only)")
    args = parser.parse_args(argv)
    verdict = {}

    def command():
        start = time.time()
        config_path = Path(args.export) / "config.json"
        if not config_path.is_file():
            raise PapError(f"{args.export}: no config.json; export with `python -m pap.convert mcore-to-hf "
                           f"--ckpt CKPT --out {args.export} --format nemotron_nas`")
        config = json.loads(config_path.read_text())
        prompts = prompts_for(config["vocab_size"], args.prompts)
        from pap.serve.greedy import pap_greedy, transformers_greedy

        runs = {}
        if args.ckpt:
            runs["pap"] = pap_greedy(args.ckpt, prompts, args.tokens)
        runs["transformers"] = transformers_greedy(args.export, prompts, args.tokens)
        if not args.no_vllm:
            runs["vllm"] = vllm_greedy(args.export, prompts, args.tokens)
        verdict["ok"] = compare(runs, prompts, args.tolerance)
        print(f"serve_check: {config['architectures'][0]} in {args.export}: "
              f"{'PASS' if verdict['ok'] else 'FAIL'}: {', '.join(runs)} over {args.prompts} prompts x "
              f"{args.tokens} tokens ({time.time() - start:.0f} s)")

    status = exit_status(command)
    return status or (0 if verdict.get("ok") else 1)

if __name__ == "__main__":
    sys.exit(main())
