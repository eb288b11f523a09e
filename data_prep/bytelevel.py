"""A word-cache encoder for byte-level BPE tokenizers that gives the `tokenizers` library's ids exactly.

For a Hugging Face tokenizer whose pipeline is

    no normalizer -> [Digits(individual_digits=True)] -> ByteLevel(add_prefix_space=False,
    use_regex=True) -> BPE (no dropout)

(GPT-2's, many later byte-level BPEs', and what `tokenizers` builds by default) the
ids of a text are the concatenation of the BPE ids of its pre-tokens, and a pre-token's
ids do not depend on where it stands. So this encoder splits the text with the same
regular expression, looks each pre-token up in a dictionary, and asks the library's own
BPE model (`tokenizer.model.tokenize`) only for pre-tokens it has not seen. Text repeats
its words, so nearly every pre-token is a hit, and the library's per-text work (offsets,
alignments, an `Encoding` object per text) is skipped. docs/BENCHMARKS.md has the speed.

Where the two could differ, the text is handed to the library instead:

* The split depends on which characters are letters (`\\p{L}`), numbers (`\\p{N}`; for
  `Digits`, Rust's `char::is_numeric`) and white space (`\\s`). The library's regex engine
  (Oniguruma) and Python's `regex` module carry their own Unicode tables, which differ
  for recently assigned characters. `probe_disagreements()` asks the library which
  characters it puts in each class and returns every character where they disagree; a
  text holding one goes to the library. ASCII text is split with the standard `re`
  module and explicit ASCII classes (twice as fast; identical on ASCII).
* Added tokens (e.g. `<|endoftext|>`) are matched in the raw text before pre-tokenization:
  a text that contains one goes to the library.
* A text the library cannot take (a lone surrogate) goes to the library, which raises.

Any other pipeline (a normalizer, `add_prefix_space`, a `Split` or `Metaspace`
pre-tokenizer, BPE dropout, truncation, padding, template tokens) is encoded by the
library throughout; `fast_plan()` says why.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from itertools import chain
from typing import List, Optional, Tuple

# Pre-tokenizer regex of the library's ByteLevel(use_regex=True) (GPT-2's).
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
# The same split after Digits(individual_digits=True) has cut every number character into
# its own piece, written as one expression over the whole text: a number is never part of
# a longer match, and for the trailing-space rule (`\s+(?!\S)`) a number counts as the end
# of a piece. tests/data_prep/test_bytelevel.py checks it against the library.
DIGITS_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?[^\s\p{L}\p{N}]+|\s+(?![^\s\p{N}])|\s+|\p{N}"""
# On ASCII text the classes are exactly these (\s is Unicode White_Space: not \x1c-\x1f).
_ASCII_CLASSES = {r"\p{L}": "A-Za-z", r"\p{N}": "0-9", r"\s": r"\t\n\x0b\x0c\r "}
CACHE_ENTRIES = 1 << 20  # distinct pre-tokens kept (a few hundred MB per worker); restarts when full
_POST_PROCESSORS = {None, "ByteLevel", "TemplateProcessing"}  # add nothing without special tokens


def ascii_pattern(pattern: str) -> str:
    """`pattern` with its Unicode classes replaced by their ASCII members, for the `re` module."""
    return _inline_classes(pattern.replace(r"\S", r"[^\s]"))


def _inline_classes(pattern: str) -> str:
    """Each class escape by its ASCII members: bare inside brackets, bracketed outside."""
    result, i, in_class = [], 0, False
    while i < len(pattern):
        c = pattern[i]
        if c == "\\" and pattern[i:i + 5] in _ASCII_CLASSES:
            members = _ASCII_CLASSES[pattern[i:i + 5]]
            result.append(members if in_class else f"[{members}]")
            i += 5
            continue
        if c == "\\" and pattern[i:i + 2] in _ASCII_CLASSES:
            members = _ASCII_CLASSES[pattern[i:i + 2]]
            result.append(members if in_class else f"[{members}]")
            i += 2
            continue
        if c == "\\":
            result.append(pattern[i:i + 2])
            i += 2
            continue
        if c == "[":
            in_class = True
        elif c == "]":
            in_class = False
        result.append(c)
        i += 1
    return "".join(result)


@dataclass(frozen=True)
class FastPlan:
    """What a worker needs to build a `ByteLevelEncoder` (picklable, small)."""

    digits: bool  # the pipeline isolates number characters first
    added: Tuple[str, ...]  # contents of the added tokens: a text holding one goes to the library
    fallback_chars: str  # characters whose class the two regex engines disagree on


def fast_plan(tokenizer, add_special_tokens: bool) -> Tuple[Optional[FastPlan], str]:
    """(plan, "") when `tokenizer` (a `tokenizers.Tokenizer`) can use the word cache, else (None, why)."""
    spec = json.loads(tokenizer.to_str())
    digits, why = _supported(spec, add_special_tokens)
    if why:
        return None, why
    added = tuple(sorted({t["content"] for t in spec.get("added_tokens") or [] if t.get("content")}))
    return FastPlan(digits=digits, added=added, fallback_chars=probe_disagreements(digits)), ""


def _supported(spec: dict, add_special_tokens: bool) -> Tuple[bool, str]:
    """(digits, "") for a supported pipeline, else (False, the reason)."""
    if add_special_tokens:
        return False, "template tokens requested"
    if spec.get("normalizer") is not None:
        return False, f"normalizer {spec['normalizer'].get('type')}"
    if spec.get("truncation") is not None or spec.get("padding") is not None:
        return False, "truncation or padding configured"
    model = spec.get("model") or {}
    if model.get("type") != "BPE" or model.get("dropout") not in (None, 0, 0.0):
        return False, f"model {model.get('type')}{' with dropout' if model.get('dropout') else ''}"
    pre = spec.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    digits = False
    if len(steps) == 2 and steps[0].get("type") == "Digits" and steps[0].get("individual_digits"):
        digits, steps = True, steps[1:]
    if not (len(steps) == 1 and steps[0].get("type") == "ByteLevel" and steps[0].get("use_regex", True)
            and not steps[0].get("add_prefix_space")):
        return False, f"pre-tokenizer {json.dumps(pre, sort_keys=True)[:120]}"
    post = spec.get("post_processor")
    posts = post.get("processors", []) if post and post.get("type") == "Sequence" else [post]
    for p in posts:
        if (p or {}).get("type") not in _POST_PROCESSORS:
            return False, f"post-processor {p.get('type')}"
    return digits, ""


# Planes 0-3 and 14 hold every assigned character: each class is probed there. The rest
# (unassigned planes 4-13, private-use planes 15-16) is probed for any class at all, which
# is cheaper; whatever either side puts in a class there goes to the library.
PROBED = ((0x0000, 0xD7FF), (0xE000, 0x3FFFF), (0xE0000, 0xE0FFF))
REST = ((0x40000, 0xDFFFF), (0xE1000, 0x10FFFF))
_PROBE_CHUNK = 4096  # the library's pre-tokenizers are several times faster on short strings


def _characters(ranges) -> str:
    return "".join(chr(c) for lo, hi in ranges for c in range(lo, hi + 1))


def _probed_characters() -> str:
    return _characters(PROBED)


def _library_pieces(pre_tokenizer, text: str) -> List[str]:
    return [piece for i in range(0, len(text), _PROBE_CHUNK)
            for piece, _ in pre_tokenizer.pre_tokenize_str(text[i:i + _PROBE_CHUNK])]


def _library_numbers(text: str) -> set:
    """The characters of `text` that the library's Digits pre-tokenizer takes for numbers."""
    from tokenizers import pre_tokenizers

    digit_runs, numbers = pre_tokenizers.Digits(individual_digits=False), set()
    for i in range(0, len(text), _PROBE_CHUNK):
        # Pieces alternate from the leading "a": other, number run, other, number run, ...
        pieces = [p for p, _ in digit_runs.pre_tokenize_str("a" + text[i:i + _PROBE_CHUNK])]
        numbers.update("".join(pieces[1::2]))
    return numbers


def probe_disagreements(digits: bool) -> str:
    """Every probed character the library's pre-tokenizer classes and Python's `regex` classes disagree on.

    Each class is probed with the library on planes 0-3 and 14, Python's members first,
    and the characters the library keeps or removes are compared; the other planes are
    checked for membership of any class (about 1 s in all).
    """
    import regex
    from tokenizers import Regex, pre_tokenizers

    everything = _probed_characters()
    rest = _characters(REST)
    anything = r"[\p{L}\p{N}\s]"
    split = pre_tokenizers.Split(Regex(anything), behavior="removed")
    kept = "".join(_library_pieces(split, rest))
    differ = set(regex.sub(f"[^{anything[1:-1]}]+", "", rest)) | (set() if kept == rest else set(rest) - set(kept))
    for cls in (r"\p{L}", r"\p{N}", r"\s"):
        members = regex.sub(f"[^{cls}]+", "", everything)
        others = regex.sub(f"{cls}+", "", everything)
        split = pre_tokenizers.Split(Regex(cls), behavior="removed")  # keeps the non-members
        library_others = set("".join(_library_pieces(split, members + others)))
        differ |= (set(members) & library_others) | (set(others) - library_others)
        if digits and cls == r"\p{N}":  # Digits uses Rust's char::is_numeric; the expression \p{N}
            differ |= set(members) ^ _library_numbers(members + others)
            differ |= _library_numbers(rest)
    return "".join(sorted(differ))


def _bytes_to_unicode() -> dict:
    """GPT-2's byte -> printable character table, as the ByteLevel pre-tokenizer uses it."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


class _PreTokenIds(dict):
    """pre-token -> tuple of ids; a miss asks the library's BPE model."""

    def __init__(self, model):
        super().__init__()
        self._tokenize = model.tokenize
        self._byte_chars = _bytes_to_unicode()

    def __missing__(self, word: str):
        if len(self) >= CACHE_ENTRIES:
            self.clear()
        chars = "".join(map(self._byte_chars.__getitem__, word.encode("utf-8")))
        ids = self[word] = tuple(token.id for token in self._tokenize(chars))
        return ids


class ByteLevelEncoder:
    """`encode(text)`: the library's ids for `text`, or None when the library must encode it."""

    def __init__(self, plan: FastPlan, tokenizer):
        import regex

        pattern = DIGITS_PATTERN if plan.digits else GPT2_PATTERN
        self._split_ascii = re.compile(ascii_pattern(pattern)).findall
        self._split = regex.compile(pattern).findall
        self._ids = _PreTokenIds(tokenizer.model)
        added = "|".join(re.escape(t) for t in sorted(plan.added, key=len, reverse=True))
        self._added = re.compile(added).search if added else None
        # A set test is four times faster than a regex class of these (mostly astral) ranges.
        self._no_fallback_chars = frozenset(plan.fallback_chars).isdisjoint

    def encode(self, text: str) -> Optional[List[int]]:
        if self._added is not None and self._added(text):
            return None
        if text.isascii():
            words = self._split_ascii(text)
        elif not self._no_fallback_chars(text):
            return None
        else:
            words = self._split(text)
        try:
            return list(chain.from_iterable(map(self._ids.__getitem__, words)))
        except UnicodeEncodeError:  # a lone surrogate: the library raises the error the caller handles
            return None
