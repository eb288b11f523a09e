"""What `--model PATH` is: a Hugging Face export, or a pap checkpoint to export first.

A checkpoint is exported with `pap.hf.convert.mcore_to_hf` into a temporary directory that
is removed when the evaluation is over, whatever happens in between.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
from pathlib import Path
from typing import Iterator, Optional

from pap import checkpoint
from pap.errors import PapError

EXPORT, CHECKPOINT = "export", "checkpoint"
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")


def kind_of(path: str) -> str:
    """`EXPORT` or `CHECKPOINT` for `path`; a PapError naming what is missing otherwise."""
    root = Path(path)
    if not root.exists():
        raise PapError(f"--model {path}: no such file or directory")
    if (root / "config.json").is_file():
        return EXPORT
    if (root / checkpoint.STATE_FILE).is_file() or checkpoint.checkpoint_dirs(str(root)):
        return CHECKPOINT
    raise PapError(f"--model {path}: neither a Hugging Face export (no config.json) nor a pap checkpoint "
                   f"(no {checkpoint.STATE_FILE} in it or in an iter_* directory below it); give a directory "
                   f"written by `pap.convert mcore-to-hf` or `pap.train`")


def uses_remote_code(export_dir: Path) -> bool:
    """Whether the export's config.json maps to pap's remote code (pruned shapes)."""
    return "auto_map" in json.loads((export_dir / "config.json").read_text())


def check_export(export_dir: Path) -> None:
    """An export the harness can load: a readable config.json and a tokenizer beside it."""
    try:
        json.loads((export_dir / "config.json").read_text())
    except ValueError as exc:
        raise PapError(f"{export_dir / 'config.json'}: not valid JSON ({exc}); export the model again") from None
    if not any((export_dir / name).is_file() for name in _TOKENIZER_FILES):
        raise PapError(f"--model {export_dir}: no tokenizer files ({', '.join(_TOKENIZER_FILES)}); export again "
                       f"with `pap.convert mcore-to-hf --tokenizer DIR`")


@contextlib.contextmanager
def as_export(path: str, tokenizer: Optional[str], report=print) -> Iterator[Path]:
    """The Hugging Face directory to evaluate for `path`: the path itself for an export, a
    temporary export (with `tokenizer` copied in) for a checkpoint, removed on exit."""
    if kind_of(path) == EXPORT:
        check_export(Path(path))
        yield Path(path)
        return
    if tokenizer is None:
        raise PapError(f"--model {path} is a pap checkpoint: give --tokenizer DIR (the tokenizer its data were "
                       f"made with) so that it can be exported for the harness")
    checkpoint.read_verified(path, "--no-verify", report)  # its files, as a resume checks them
    # megatron-core and transformers (heavy) load only to export a checkpoint.
    from pap.distributed import shutdown
    from pap.hf.convert import mcore_to_hf

    scratch = Path(tempfile.mkdtemp(prefix="pap-eval-"))
    try:
        try:
            export = mcore_to_hf(path, str(scratch / "hf"), tokenizer, progress=report)
        finally:
            # The export runs megatron in a one-process group; the harness needs none.
            shutdown()
        yield export
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def load_tokenizer(export_dir: Path, remote: bool):
    """The export's tokenizer, with an end-of-text token the harness can use.

    lm-eval conditions empty contexts on, and pads with, the tokenizer's BOS or EOS token.
    A bare `tokenizer.json` (as `data_prep` and the demo write) declares neither; its one
    special token is then the end-of-document token the data were made with, and is used.
    """
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(export_dir), trust_remote_code=remote)
    if tokenizer.eos_token is None and tokenizer.bos_token is None:
        special = sorted({t.content for t in tokenizer.added_tokens_decoder.values() if t.special})
        if len(special) != 1:
            raise PapError(f"{export_dir}: the tokenizer declares no eos_token and has "
                           f"{len(special)} special tokens ({', '.join(special[:4]) or 'none'}), so none can be "
                           f"taken for it; add a tokenizer_config.json with \"eos_token\" to the export")
        tokenizer.eos_token = special[0]
    return tokenizer
