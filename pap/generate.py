"""Generate text from an exported Hugging Face model with `transformers` alone.

    python -m pap.generate HF_DIR [--prompt TEXT] [--max-new-tokens N]

This is how a user checks an export: nothing of pap runs in the loop, only
`AutoTokenizer` and `AutoModelForCausalLM` on the directory that `pap.convert mcore-to-hf`
wrote (pruned shapes load through the remote code shipped beside the weights).
Decoding is greedy, so the same export always prints the same text.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pap.errors import PapError, exit_status


def generate(hf_dir: str, prompt: str, max_new_tokens: int = 32, report=print) -> str:
    """Greedy continuation of `prompt` by the model in `hf_dir` (decoded, prompt excluded)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(hf_dir)
    if not (path / "config.json").is_file():
        raise PapError(f"{hf_dir}: no config.json; export a checkpoint with "
                       f"`python -m pap.convert mcore-to-hf --ckpt CKPT --out {hf_dir} --tokenizer TOKENIZER_DIR`")
    if not any((path / name).is_file() for name in ("tokenizer.json", "tokenizer.model", "vocab.json")):
        raise PapError(f"{hf_dir}: no tokenizer files; export again with --tokenizer pointing at the tokenizer")
    # Remote code is pap's own (copied by the exporter), needed for per-layer / cluster shapes.
    remote = "auto_map" in json.loads((path / "config.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(hf_dir, trust_remote_code=remote)
    model = AutoModelForCausalLM.from_pretrained(hf_dir, trust_remote_code=remote, dtype=torch.float32)
    model.eval()
    report(f"transformers loaded {type(model).__name__} from {hf_dir}: "
           f"{sum(p.numel() for p in model.parameters()):,} parameters")
    inputs = tokenizer(prompt, return_tensors="pt")
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                                pad_token_id=tokenizer.eos_token_id or 0)
    return tokenizer.decode(output[0, inputs["input_ids"].shape[1]:])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="pap.generate", description=__doc__.split("\n\n")[0])
    parser.add_argument("hf_dir", help="directory written by `pap.convert mcore-to-hf`")
    parser.add_argument("--prompt", default="def ", help="text to continue")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    args = parser.parse_args(argv)

    def command():
        text = generate(args.hf_dir, args.prompt, args.max_new_tokens)
        print(f"prompt: {args.prompt!r}\ngenerated ({args.max_new_tokens} tokens, greedy): {text!r}")

    return exit_status(command)

if __name__ == "__main__":
    sys.exit(main())
