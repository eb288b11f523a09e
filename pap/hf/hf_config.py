"""A Hugging Face model directory's `config.json` -> its family, pap `Arch` and model settings."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Tuple

from pap.arch import Arch
from pap.config import ModelConfig
from pap.errors import PapError
from pap.hf.families import ExportFamily, importing_family


def read_hf_config(hf_dir: str, make_vocab_size_divisible_by: int = 128
                   ) -> Tuple[ExportFamily, Arch, ModelConfig, str]:
    """(family, Arch, ModelConfig, torch dtype name) of the checkpoint in `hf_dir`."""
    path = Path(hf_dir) / "config.json"
    try:
        cfg = json.loads(path.read_text())
    except FileNotFoundError:
        raise PapError(f"{path}: not found; --hf must be a Hugging Face model directory") from None
    except json.JSONDecodeError as exc:
        raise PapError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    family = importing_family(cfg, path)
    return (family, *family.read_config(cfg, path, make_vocab_size_divisible_by))
