"""What an export family is: a Hugging Face model class pap writes, as data plus a few methods.

A family holds
* its names: `name` (the registry key), `architecture` and `model_type` (config.json);
* `tensors`: a table of `TensorMap`s, each tying megatron tensors to Hugging Face tensors
  through a `Transform` (a rename, the QKV interleave, the gated-MLP split, ...);
* `accepts(arch)`: whether the class can hold a (possibly pruned) `Arch`, and if not why;
* `config(...)`: the config.json it writes, and `write_files(...)`: anything shipped
  beside the weights (remote code);
* optionally the reverse: `imports` and `read_config(...)`, for hf-to-mcore.

The converter (`pap.hf.convert`) walks a family's table and never asks which family it
has, so a new family is one new module in `pap/hf/families/` plus its entry in
`FAMILIES`. For example NVIDIA's Nemotron-NAS (`nemotron_nas.py`) is Llama's table
with one transform swapped (attention padded to the format's per-layer groups), a
`config` that writes one block config per layer, `notes` on the padding, and its remote
code in `write_files`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

from pap.arch import Arch
from pap.config import ModelConfig

Tensors = Sequence[torch.Tensor]


class Transform:
    """How the megatron tensors of one `TensorMap` become its Hugging Face tensors and back.

    Export takes a whole group at once (all megatron tensors in, all HF tensors out);
    import builds one megatron tensor at a time, because the model being filled asks for
    its parameters one by one, and reads only the HF tensors that one needs.
    """

    def to_hf(self, mcore: Tensors, arch: Arch, layer: Optional[int]) -> Tensors:
        """The map's HF tensors, in its `hf` order, from its megatron tensors in `mcore` order."""
        raise NotImplementedError

    def to_mcore(self, index: int, read: Callable[[int], torch.Tensor], arch: Arch,
                 layer: Optional[int]) -> torch.Tensor:
        """The map's `index`-th megatron tensor; `read(i)` loads its i-th HF tensor."""
        raise NotImplementedError


def _always(arch: Arch, layer: Optional[int]) -> bool:
    return True


@dataclass(frozen=True)
class TensorMap:
    """Megatron tensors and the Hugging Face tensors that hold the same weights.

    Names are templates with `{}` for the layer index (none outside the layers). An export
    writes the map's HF tensors where the first of `mcore` comes in the megatron state, so
    tensors that travel together (a head's q/k/v rows and its `o_proj` columns) stay
    together in the files. `present(arch, layer)` is False where the family has no such
    tensor (the output layer of a tied model).
    """

    mcore: Tuple[str, ...]
    hf: Tuple[str, ...]
    transform: Transform
    present: Callable[[Arch, Optional[int]], bool] = _always

    def hf_names(self, layer: Optional[int]) -> List[str]:
        """The map's HF names in layer `layer`."""
        return [name.format(layer) for name in self.hf]


class ExportFamily:
    """One Hugging Face model class pap exports to (and, where `imports`, converts from)."""

    name: str = ""
    """Registry key (`pap.hf.families.FAMILIES`)."""
    title: str = ""
    """What the family is called in messages, e.g. 'Llama'."""
    architecture: str = ""
    """config.json `architectures[0]`."""
    model_type: str = ""
    """config.json `model_type`."""
    tensors: Tuple[TensorMap, ...] = ()
    """Every tensor of the model, megatron side and HF side."""
    imports: bool = False
    """Whether hf-to-mcore reads checkpoints of this family (`read_config`)."""

    def __init__(self):
        self._by_mcore: Dict[str, Tuple[TensorMap, int]] = {
            template: (entry, index) for entry in self.tensors for index, template in enumerate(entry.mcore)}

    def accepts(self, arch: Arch) -> Optional[str]:
        """None when this family can hold `arch`; else why not, as a phrase for a message."""
        raise NotImplementedError

    def config(self, arch: Arch, model: ModelConfig, dtype: str) -> dict:
        """config.json for `arch` (which `accepts`), with run settings from `model` and the
        torch dtype name of the written weights."""
        raise NotImplementedError

    def write_files(self, out_dir: Path) -> None:
        """Write what ships beside the weights and config.json (nothing by default)."""

    def notes(self, arch: Arch, seq_length: int) -> List[str]:
        """Lines the converter prints about an export of `arch` (padding, which engines read it)."""
        return []

    def reads(self, hf_config: dict) -> bool:
        """Whether hf-to-mcore should read a checkpoint with this config.json as this family."""
        archs = hf_config.get("architectures") or []
        return self.imports and (hf_config.get("model_type") == self.model_type or self.architecture in archs)

    def read_config(self, hf_config: dict, path: Path, make_vocab_size_divisible_by: int
                    ) -> Tuple[Arch, ModelConfig, str]:
        """(Arch, ModelConfig, torch dtype name) of a checkpoint this family `reads`;
        `path` names config.json in messages."""
        raise NotImplementedError

    # ---- the table -----------------------------------------------------------------------
    def mapping(self, mcore_template: str) -> Optional[Tuple[TensorMap, int]]:
        """(the map holding megatron tensor `mcore_template`, its index there), or None."""
        return self._by_mcore.get(mcore_template)

    def hf_names_of(self, mcore_template: str, layer: Optional[int] = None) -> List[str]:
        """The HF names of the map holding megatron tensor `mcore_template`, in layer `layer`."""
        entry, _ = self._by_mcore[mcore_template]
        return entry.hf_names(layer)

    def hf_names(self, arch: Arch) -> List[str]:
        """Every HF tensor name a checkpoint of `arch` in this family holds."""
        names = []
        for entry in self.tensors:
            layers = range(arch.num_layers) if any("{}" in t for t in entry.mcore) else [None]
            names += [name for layer in layers if entry.present(arch, layer) for name in entry.hf_names(layer)]
        return names
