"""Find, check and load the tokenizer: a Hugging Face `tokenizer.json` or a SentencePiece `.model`.

`resolve()` runs in the parent before any work starts and turns every problem (missing
path, unreadable file, no end-of-document token when one is needed) into one `PapError`
line. Workers then call `TokenizerSpec.load()` once each.

Token ids match Megatron-LM's `preprocess_data.py`: for Hugging Face tokenizers it encodes
with `add_special_tokens=False` (its `HuggingFaceTokenizer` tokenizes without the
template tokens unless `--tokenizer-hf-include-special-tokens`), and its end-of-document
id is the tokenizer's `eos_token` from `tokenizer_config.json`.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

from pap.errors import PapError

from data_prep.bytelevel import ByteLevelEncoder, FastPlan, fast_plan

HF, SENTENCEPIECE = "huggingface", "sentencepiece"
# Megatron-LM --tokenizer-type values that mean the same tokenizer files as ours.
MEGATRON_TYPES = {"HuggingFaceTokenizer": HF, "SentencePieceTokenizer": SENTENCEPIECE,
                  "GPTSentencePieceTokenizer": SENTENCEPIECE, "Llama2Tokenizer": SENTENCEPIECE}
# Tried in this order when a bare tokenizer.json names no eos_token.
_COMMON_EOD = ("<|endoftext|>", "</s>", "<|end_of_text|>", "<eos>")
_HF_CONFIGS = ("tokenizer_config.json", "special_tokens_map.json")
ENCODERS = ("auto", "library")


def limit_threads() -> None:
    """One thread per process: workers are the parallelism, and per-core figures stay honest."""
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    os.environ["RAYON_NUM_THREADS"] = "1"


@dataclass(frozen=True)
class TokenizerSpec:
    """Everything a worker needs to load the tokenizer, plus what the outputs record about it."""

    kind: str  # HF or SENTENCEPIECE
    path: str  # the tokenizer.json or .model file
    given: str  # the path as the user gave it
    vocab_size: int  # largest id + 1, added tokens included
    eod: Optional[int]
    eod_token: Optional[str]
    add_special_tokens: bool
    digest: str  # sha256 of the tokenizer files: identifies it in resume checks
    fast: Optional[FastPlan] = None  # the word-cache encoder's plan (same ids, faster), if it applies
    encoder_note: str = ""  # why the library encodes everything, when it does

    def load(self) -> "Tokenizer":
        """A ready tokenizer (call once per process)."""
        return Tokenizer(self)

    def describe(self) -> str:
        eod = f"eod {self.eod_token!r} = {self.eod}" if self.eod is not None else "no eod token"
        if self.kind != HF:
            encoder = ""
        elif self.fast is not None:
            encoder = ", word-cache byte-level encoder"
        else:
            encoder = f", library encoder{f' ({self.encoder_note})' if self.encoder_note else ''}"
        return f"{self.kind} {self.given} (vocab {self.vocab_size:,}, {eod}{encoder})"


class Tokenizer:
    """Batch encoding and decoding with one of the two libraries."""

    def __init__(self, spec: TokenizerSpec):
        self.spec = spec
        self.handed_back = 0  # texts the word cache passed to the library
        if spec.kind == HF:
            from tokenizers import Tokenizer as HFTokenizer

            self._hf = HFTokenizer.from_file(spec.path)
            self._fast = ByteLevelEncoder(spec.fast, self._hf) if spec.fast is not None else None
        else:
            import sentencepiece

            self._sp = sentencepiece.SentencePieceProcessor(model_file=spec.path)

    def encode_batch(self, texts: List[str]) -> List[Optional[List[int]]]:
        """Token ids of each text (no end-of-document token); None for a text that is not valid
        Unicode (a lone surrogate from a JSON escape), which neither library can encode."""
        try:
            return self._encode(texts)
        except (TypeError, UnicodeError, RuntimeError, ValueError):
            if len(texts) == 1:
                return [None]
        # Rare: find the offending texts one by one so the rest of the batch is kept.
        return [self.encode_batch([t])[0] for t in texts]

    def _encode(self, texts: List[str]) -> List[List[int]]:
        if self.spec.kind != HF:
            return self._sp.encode(texts, out_type=int, num_threads=1)
        if self._fast is None:
            return self._library(texts)
        out = [self._fast.encode(t) for t in texts]
        rest = [i for i, ids in enumerate(out) if ids is None]
        self.handed_back += len(rest)
        if rest:
            for i, ids in zip(rest, self._library([texts[i] for i in rest])):
                out[i] = ids
        return out

    def _library(self, texts: List[str]) -> List[List[int]]:
        # encode_batch_fast skips the character offsets we never use.
        return [e.ids for e in self._hf.encode_batch_fast(texts, add_special_tokens=self.spec.add_special_tokens)]

    def encode(self, text: str) -> List[int]:
        """Token ids of one text."""
        return self._encode([text])[0]

    def decode(self, ids: List[int]) -> str:
        """Text of token ids, special tokens shown."""
        ids = [int(i) for i in ids]
        if self.spec.kind == HF:
            return self._hf.decode(ids, skip_special_tokens=False)
        return self._sp.decode(ids)


def _digest(paths: List[Path]) -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update(p.name.encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()


def _hf_eos_from_configs(directory: Path) -> Optional[str]:
    for name in _HF_CONFIGS:
        path = directory / name
        if not path.is_file():
            continue
        try:
            token = json.loads(path.read_text()).get("eos_token")
        except (ValueError, AttributeError):
            raise PapError(f"{path}: not a valid JSON object") from None
        if isinstance(token, dict):
            token = token.get("content")
        if isinstance(token, str):
            return token
    return None


def _locate(path: Path, tokenizer_type: Optional[str]) -> tuple:
    """(kind, tokenizer file, config files) for a directory or file."""
    if path.is_dir():
        if (path / "tokenizer.json").is_file():
            kind, file = HF, path / "tokenizer.json"
        elif (path / "tokenizer.model").is_file():
            kind, file = SENTENCEPIECE, path / "tokenizer.model"
        else:
            raise PapError(f"--tokenizer {path}: no tokenizer.json (Hugging Face) or tokenizer.model "
                           f"(SentencePiece) in this directory")
    elif path.is_file():
        if path.suffix == ".json":
            kind, file = HF, path
        elif path.suffix == ".model":
            kind, file = SENTENCEPIECE, path
        else:
            raise PapError(f"--tokenizer {path}: expected a Hugging Face tokenizer directory, a tokenizer.json "
                           f"or a SentencePiece .model file")
    else:
        raise PapError(f"--tokenizer {path}: no such file or directory")
    if tokenizer_type:
        if tokenizer_type not in MEGATRON_TYPES:
            raise PapError(f"--tokenizer-type {tokenizer_type}: supported are {', '.join(MEGATRON_TYPES)}")
        if MEGATRON_TYPES[tokenizer_type] != kind:
            raise PapError(f"--tokenizer-type {tokenizer_type} does not match {file} (a {kind} tokenizer)")
    configs = [file.parent / n for n in _HF_CONFIGS if kind == HF and (file.parent / n).is_file()]
    return kind, file, configs


def resolve(path: str, tokenizer_type: Optional[str] = None, eod_token: Optional[str] = None,
            include_special_tokens: bool = False, encoder: str = "library") -> TokenizerSpec:
    """Check and describe the tokenizer at `path`; every problem is a one-line `PapError`.

    `encoder="auto"` plans the word-cache encoder (data_prep/bytelevel.py) for a
    Hugging Face byte-level BPE it applies to (about 1 s of probing); "library" encodes
    with the tokenizer's own library only.
    """
    if encoder not in ENCODERS:
        raise PapError(f"--encoder {encoder!r}: choose {' or '.join(ENCODERS)}")
    fast, note = None, ""
    kind, file, configs = _locate(Path(path), tokenizer_type)
    if kind == HF:
        from tokenizers import Tokenizer as HFTokenizer

        try:
            tok = HFTokenizer.from_file(str(file))
        except Exception as exc:  # the library raises a bare Exception for bad files
            raise PapError(f"--tokenizer {file}: not a Hugging Face tokenizer.json ({str(exc).splitlines()[0]})") \
                from None
        vocab = tok.get_vocab(with_added_tokens=True)
        vocab_size = max(tok.get_vocab_size(with_added_tokens=True), max(vocab.values(), default=-1) + 1)
        if eod_token is None:
            eod_token = _hf_eos_from_configs(file.parent) if configs else None
        if eod_token is None:
            eod_token = next((t for t in _COMMON_EOD if t in vocab), None)
        eod = None if eod_token is None else tok.token_to_id(eod_token)
        if eod_token is not None and eod is None:
            raise PapError(f"--tokenizer {file}: end-of-document token {eod_token!r} is not in the vocabulary")
        if encoder == "auto":
            fast, note = fast_plan(tok, include_special_tokens)
    else:
        import sentencepiece

        try:
            sp = sentencepiece.SentencePieceProcessor(model_file=str(file))
        except (OSError, RuntimeError) as exc:
            raise PapError(f"--tokenizer {file}: not a SentencePiece model ({str(exc).splitlines()[0]})") from None
        vocab_size = sp.get_piece_size()
        if eod_token is not None:
            eod = sp.piece_to_id(eod_token)
            if sp.id_to_piece(eod) != eod_token:
                raise PapError(f"--tokenizer {file}: end-of-document token {eod_token!r} is not in the vocabulary")
        else:
            eod = sp.eos_id() if sp.eos_id() >= 0 else None
            eod_token = sp.id_to_piece(eod) if eod is not None else None
    return TokenizerSpec(kind=kind, path=str(file), given=path, vocab_size=int(vocab_size), eod=eod,
                         eod_token=eod_token, add_special_tokens=include_special_tokens,
                         digest=_digest([file] + configs), fast=fast, encoder_note=note)


def from_sidecar(meta: dict, sidecar_dir: Path) -> Optional[TokenizerSpec]:
    """The tokenizer a dataset's sidecar names (relative paths are relative to the sidecar), if found."""
    name = meta.get("tokenizer")
    if not isinstance(name, str):
        return None
    path = Path(name) if os.path.isabs(name) else sidecar_dir / name
    if not path.exists():
        return None
    return resolve(str(path), eod_token=meta.get("eod_token"))
