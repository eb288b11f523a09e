"""Build a Megatron data blend from target token shares, and show what it implies.

    python -m data_prep.blend --share 0.8 data/fineweb-edu_text_document \\
        --share 0.2 data/python-edu_text_document --train-tokens 50B --output data/mix.args
    python -m data_prep.blend --from configs/smollm.blend --train-tokens 50B
    python -m data_prep.blend --by-size data/a_text_document data/b_text_document

Megatron's `BlendedDataset` draws each fixed-length sample from dataset i with
probability weight_i / sum(weights), so a weight *is* a share of training tokens. This
command reads every dataset's token count from its `.idx`, normalises the shares, and
prints for each dataset the tokens it holds, the tokens a run of `--train-tokens` draws
from it and the epochs that implies (> 1: its documents repeat). It prints the blend as
Megatron-LM arguments (`--data-path w p w p ...`), as a pap YAML `data.blend` list, and
with `--output` writes the file form Megatron-LM reads with `--data-args-path`.

Shares come from `--share W PREFIX` (repeatable), `--by-size PREFIX ...` (shares in
proportion to the tokens each dataset holds: one pass over each per epoch of the mix) or
`--from FILE`: lines of `share prefix`, `#` comments allowed (see configs/*.blend).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

from pap.errors import PapError

from data_prep.index import read_index, strip_suffix
from data_prep.report import human

_SCALE = {"": 1, "K": 10**3, "M": 10**6, "B": 10**9, "G": 10**9, "T": 10**12}


def parse_count(text: str) -> int:
    """`50B`, `1.5T`, `300M`, `1000000` -> an integer token count."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([KMBGT]?)\s*", str(text), re.IGNORECASE)
    if not m:
        raise PapError(f"--train-tokens {text!r}: expected a count such as 50B, 1.5T or 300000000")
    return int(float(m.group(1)) * _SCALE[m.group(2).upper()])


@dataclass
class Component:
    """One dataset of the blend."""

    prefix: str
    share: float  # normalised: the shares of a blend sum to 1
    tokens: int  # tokens the dataset holds
    documents: int

    def drawn(self, train_tokens: int) -> float:
        """Tokens a run of `train_tokens` draws from this dataset."""
        return self.share * train_tokens

    def epochs(self, train_tokens: int) -> float:
        return self.drawn(train_tokens) / self.tokens if self.tokens else float("inf")


def read_blend_file(path: str) -> List[Tuple[float, str]]:
    """`share prefix` pairs from a blend file (`#` starts a comment; any whitespace separates)."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise PapError(f"--from {path}: {exc.strerror}") from None
    words = " ".join(line.split("#", 1)[0] for line in text.splitlines()).split()
    if not words or len(words) % 2:
        raise PapError(f"{path}: expected pairs of `share prefix` (found {len(words)} words)")
    pairs = []
    for weight, prefix in zip(words[0::2], words[1::2]):
        pairs.append((_weight(weight, path), prefix))
    return pairs


def _weight(text, where: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise PapError(f"{where}: share {text!r} is not a number") from None
    if value < 0 or value != value:
        raise PapError(f"{where}: share {text!r} must be a non-negative number")
    return value


def build(pairs: Sequence[Tuple[Optional[float], str]]) -> List[Component]:
    """Components with normalised shares; a share of None means "in proportion to its tokens"."""
    if not pairs:
        raise PapError("no datasets: give --share W PREFIX, --by-size PREFIX ... or --from FILE")
    comps = []
    seen = set()
    for share, prefix in pairs:
        prefix = strip_suffix(prefix)
        if any(ch.isspace() for ch in prefix):
            raise PapError(f"{prefix!r}: Megatron blends are split on whitespace; use a path without spaces")
        if prefix in seen:
            raise PapError(f"{prefix}: listed twice")
        seen.add(prefix)
        index = read_index(prefix)
        comps.append(Component(prefix, share if share is not None else float(index.num_tokens),
                               index.num_tokens, index.num_documents))
    total = sum(c.share for c in comps)
    if total <= 0:
        raise PapError("the shares sum to zero")
    for c in comps:
        c.share /= total
        if c.share > 0 and c.tokens == 0:
            raise PapError(f"{c.prefix}: holds no tokens but has a share of {c.share:.3g}")
    return comps


def format_weight(share: float) -> str:
    """A share as a short decimal that still sums to ~1 across the blend."""
    return f"{share:.6g}"


def megatron_args(comps: Sequence[Component]) -> str:
    """`w1 p1 w2 p2 ...`: the value of --data-path, and the content of a --data-args-path file."""
    return " ".join(f"{format_weight(c.share)} {c.prefix}" for c in comps)


def _yaml_str(text: str) -> str:
    # Plain paths stay readable; anything else is quoted (a JSON string is valid YAML).
    return text if re.fullmatch(r"[A-Za-z0-9_./][A-Za-z0-9_./\-]*", text) else json.dumps(text)


def yaml_blend(comps: Sequence[Component]) -> str:
    """The blend as the `data:` section of a pap YAML config."""
    items = ", ".join(f"{format_weight(c.share)}, {_yaml_str(c.prefix)}" for c in comps)
    return f"data:\n  blend: [{items}]"


def table(comps: Sequence[Component], train_tokens: Optional[int]) -> str:
    width = max(len("dataset"), *(len(c.prefix) for c in comps))
    head = f"{'dataset':<{width}}  {'documents':>11}  {'tokens':>9}  {'share':>7}"
    if train_tokens:
        head += f"  {'drawn':>9}  {'epochs':>7}"
    rows = [head]
    for c in comps:
        row = f"{c.prefix:<{width}}  {c.documents:>11,}  {human(c.tokens):>9}  {c.share:>7.2%}"
        if train_tokens:
            epochs = c.epochs(train_tokens)
            row += f"  {human(c.drawn(train_tokens)):>9}  {epochs:>7.3g}" + ("  (repeats)" if epochs > 1 else "")
        rows.append(row)
    total_tokens = sum(c.tokens for c in comps)
    total = f"{'total':<{width}}  {sum(c.documents for c in comps):>11,}  {human(total_tokens):>9}  {1:>7.2%}"
    if train_tokens:
        total += f"  {human(train_tokens):>9}  {train_tokens / total_tokens if total_tokens else 0:>7.3g}"
    rows.append(total)
    return "\n".join(rows)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m data_prep.blend", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--share", nargs=2, action="append", default=[], metavar=("SHARE", "PREFIX"),
                   help="target share of training tokens for a dataset (repeatable; normalised to sum to 1)")
    p.add_argument("--by-size", nargs="+", default=[], metavar="PREFIX",
                   help="datasets whose shares follow the tokens they hold")
    p.add_argument("--from", dest="from_file", metavar="FILE", help="a blend file of `share prefix` lines")
    p.add_argument("--train-tokens", help="tokens the run trains on (e.g. 50B): shows tokens drawn and epochs")
    p.add_argument("--output", metavar="FILE", help="write the blend for Megatron-LM's --data-args-path here")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        pairs: List[Tuple[Optional[float], str]] = []
        if args.from_file:
            pairs += read_blend_file(args.from_file)
        pairs += [(_weight(w, "--share"), p) for w, p in args.share]
        if args.by_size and pairs:
            raise PapError("--by-size sets every share; do not combine it with --share or --from")
        pairs += [(None, p) for p in args.by_size]
        comps = build(pairs)
        train_tokens = parse_count(args.train_tokens) if args.train_tokens else None
    except PapError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(table(comps, train_tokens))
    print()
    print("Megatron-LM:  --data-path " + megatron_args(comps))
    print()
    print("pap config:")
    print(yaml_blend(comps))
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(megatron_args(comps) + "\n")
        print(f"\nwrote {args.output} (Megatron-LM: --data-args-path {args.output})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
