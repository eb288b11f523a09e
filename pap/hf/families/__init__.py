"""The Hugging Face model families pap exports to, and how one is chosen.

`FAMILIES` is in order of preference: an export is written as the first family that can
hold the model's `Arch`, unless one is asked for by name. See `base.ExportFamily` for
what a family is and how to add one.
"""

from __future__ import annotations

from typing import Dict, Optional

from pap.arch import Arch
from pap.errors import PapError
from pap.hf.families.base import ExportFamily, TensorMap, Transform
from pap.hf.families.llama import LlamaFamily
from pap.hf.families.nemotron_nas import NemotronNasFamily
from pap.hf.families.pap_llama import PapLlamaFamily

# Nemotron-NAS holds every model too, padded; pap's remote code holds it unpadded, so
# `auto` prefers it and Nemotron-NAS is written when asked for (it is what engines serve).
FAMILIES: Dict[str, ExportFamily] = {family.name: family for family in (LlamaFamily(), PapLlamaFamily(),
                                                                         NemotronNasFamily())}

__all__ = ["FAMILIES", "ExportFamily", "TensorMap", "Transform", "pick", "importing_family"]


def pick(arch: Arch, requested: Optional[str] = None) -> ExportFamily:
    """The family an export of `arch` is written as: `requested` (a `FAMILIES` key) if given,
    refused with its reason when it cannot hold `arch`; else the first family that can."""
    if requested is not None:
        family = FAMILIES.get(requested)
        if family is None:
            raise PapError(f"unknown export family {requested!r}; known: {', '.join(FAMILIES)}")
        reason = family.accepts(arch)
        if reason is not None:
            raise PapError(f"export family {requested!r} ({family.architecture}) cannot hold this model: {reason}")
        return family
    for family in FAMILIES.values():
        if family.accepts(arch) is None:
            return family
    raise PapError("no export family can hold this model: "
                   + "; ".join(f"{name}: {family.accepts(arch)}" for name, family in FAMILIES.items()))


def importing_family(hf_config: dict, path) -> ExportFamily:
    """The family hf-to-mcore reads a checkpoint with config.json `hf_config` (at `path`) as."""
    for family in FAMILIES.values():
        if family.reads(hf_config):
            return family
    importers = [family for family in FAMILIES.values() if family.imports]
    archs = hf_config.get("architectures") or []
    raise PapError(f"{path}: model_type {hf_config.get('model_type')!r} ({', '.join(archs) or 'no architectures'}) "
                   f"is not a {' or '.join(f.title for f in importers)} model; only "
                   f"{' or '.join(f.architecture for f in importers)}-style checkpoints convert")
