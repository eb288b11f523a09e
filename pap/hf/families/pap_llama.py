"""pap's remote-code Llama (`PapLlamaForCausalLM`): any shape pruning leaves.

Llama's tensors and config, plus per-layer head counts and FFN widths and cluster
attention (`pap/hf/remote_code`), loaded with `trust_remote_code=True`. Export only.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Optional

from pap.arch import Arch
from pap.config import ModelConfig
from pap.hf.families.llama import LlamaFamily

REMOTE_CODE = Path(__file__).resolve().parent.parent / "remote_code"
CODE_FILES = ("configuration_pap_llama.py", "modeling_pap_llama.py")


class PapLlamaFamily(LlamaFamily):
    """Llama with per-layer shapes; holds every `Arch`."""

    name = "pap_llama"
    title = "pap Llama (remote code)"
    architecture = "PapLlamaForCausalLM"
    model_type = "pap_llama"
    imports = False

    def accepts(self, arch: Arch) -> Optional[str]:
        return None

    def config(self, arch: Arch, model: ModelConfig, dtype: str) -> dict:
        return {
            **super().config(arch, model, dtype),
            "heads_per_group": [list(g) for g in arch.heads_per_group],
            "ffn_per_layer": list(arch.ffn),
            "auto_map": {"AutoConfig": "configuration_pap_llama.PapLlamaConfig",
                         "AutoModelForCausalLM": "modeling_pap_llama.PapLlamaForCausalLM"},
        }

    def write_files(self, out_dir: Path) -> None:
        """The configuration and modeling files that config.json's `auto_map` names."""
        for name in CODE_FILES:
            shutil.copy2(REMOTE_CODE / name, out_dir / name)
