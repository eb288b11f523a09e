"""NVIDIA's Nemotron-NAS / DeciLM (`DeciLMForCausalLM`, `model_type: nemotron-nas`): the
heterogeneous Llama that serving engines load, holding any pruned pap model exactly.

Per layer (`block_configs`): `attention.n_heads_in_group` and `ffn.intermediate_size` (or
`ffn.ffn_mult`). Query heads are global, so per-layer head counts and uneven KV groups
are padded with zero query heads and copied KV heads (`pap.hf.nas_padding`); FFN widths
are exact. Which engine reads which FFN field:

* `ffn_mult` (width = 2 * ffn_mult * hidden / 3 rounded up to a multiple of 256): vLLM,
  SGLang, TensorRT-LLM, megatron-core, NVIDIA's own remote code. Written when every
  layer's width is a multiple of 256 (`prune.final_multiple_of: 256`).
* `intermediate_size` without `ffn_mult`: vLLM only (since its PR #30795); written
  otherwise, with `ffn_hidden_size` beside it for megatron-core's `block_configs` reader.

transformers loads the export with `trust_remote_code=True` through the configuration and
modeling files shipped beside it (`pap/hf/remote_code`). Export only.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import List, Optional

import torch

from pap.arch import Arch
from pap.config import ModelConfig
from pap.hf import layout, nas_padding
from pap.hf import megatron_names as mc
from pap.hf.families.base import TensorMap, Transform
from pap.hf.families.llama import LLAMA_TENSORS, LlamaFamily
from pap.hf.families.pap_llama import REMOTE_CODE

CODE_FILES = ("configuration_nemotron_nas.py", "modeling_nemotron_nas.py", "configuration_pap_llama.py",
              "modeling_pap_llama.py")
FFN_MULT_MULTIPLE = 256


class PaddedQKV(Transform):
    """megatron (`linear_qkv`, `linear_proj`) -> (q, k, v, o) with the layer laid out as
    `nas_padding.plan` says: chunks of `n_heads_in_group` query heads, one KV head each."""

    def to_hf(self, mcore, arch, layer):
        qkv, out = mcore
        q, k, v = layout.qkv_from_megatron(qkv, arch.heads_per_group[layer], arch.head_dim)
        d, hidden = arch.head_dim, arch.hidden_size
        q, k, v = q.view(-1, d, hidden), k.view(-1, d, hidden), v.view(-1, d, hidden)
        o = out.view(hidden, -1, d)
        zero_rows, zero_cols = q.new_zeros(d, hidden), o.new_zeros(hidden, d)
        q_out, k_out, v_out, o_out = [], [], [], []
        for group, heads in nas_padding.plan(arch).layers[layer].chunks:
            k_out.append(zero_rows if group is None else k[group])
            v_out.append(zero_rows if group is None else v[group])
            for head in heads:
                q_out.append(zero_rows if head is None else q[head])
                o_out.append(zero_cols if head is None else o[:, head])
        return (torch.cat(q_out), torch.cat(k_out), torch.cat(v_out), torch.cat(o_out, dim=1))

    def to_mcore(self, index, read, arch, layer):
        raise NotImplementedError("Nemotron-NAS exports do not convert back (hf-to-mcore reads Llama)")


NAS_TENSORS = tuple(
    TensorMap(entry.mcore, entry.hf, PaddedQKV()) if entry.mcore == (mc.QKV, mc.ATTENTION_OUT) else entry
    for entry in LLAMA_TENSORS)
"""Llama's tensors, the attention ones padded to the layer's chunks."""


def ffn_mult_for(width: int, hidden_size: int) -> Optional[float]:
    """An `ffn_mult` (6 decimals, as NVIDIA's readers round it) that every reader's formula
    turns back into exactly `width`; None when `width` is not a multiple of 256."""
    if width % FFN_MULT_MULTIPLE:
        return None
    for nudge in range(0, 5):
        mult = round(1.5 * width / hidden_size - nudge * 1e-6, 6)
        if -(-int(2 * mult * hidden_size / 3) // FFN_MULT_MULTIPLE) * FFN_MULT_MULTIPLE == width:
            return mult
    return None


class NemotronNasFamily(LlamaFamily):
    """Any pap model as `DeciLMForCausalLM`, padded where the format needs it."""

    name = "nemotron_nas"
    title = "Nemotron-NAS (DeciLM)"
    architecture = "DeciLMForCausalLM"
    model_type = "nemotron-nas"
    tensors = NAS_TENSORS
    imports = False

    def accepts(self, arch: Arch) -> Optional[str]:
        if any(not any(groups) for groups in arch.heads_per_group):
            return "a layer has no attention heads (no_op blocks are not written)"
        return None

    def ffn_fields(self, arch: Arch) -> List[dict]:
        """Each layer's `ffn` entry: `ffn_mult` when every width allows it, else exact sizes."""
        mults = [ffn_mult_for(width, arch.hidden_size) for width in arch.ffn]
        if all(m is not None for m in mults):
            return [{"ffn_mult": m, "no_op": False, "replace_with_linear": False} for m in mults]
        return [{"intermediate_size": width, "ffn_hidden_size": width, "no_op": False, "replace_with_linear": False}
                for width in arch.ffn]

    def config(self, arch: Arch, model: ModelConfig, dtype: str) -> dict:
        attention = nas_padding.plan(arch)
        padded = attention.padded_arch(arch)
        blocks = [{"attention": {"n_heads_in_group": layer.heads_per_chunk, "no_op": False,
                                 "replace_with_linear": False}, "ffn": ffn}
                  for layer, ffn in zip(attention.layers, self.ffn_fields(arch))]
        return {
            **super().config(padded, model, dtype),
            "num_attention_heads": attention.query_heads,
            "num_key_value_heads": attention.layers[0].kv_heads,
            "block_configs": blocks,
            "auto_map": {"AutoConfig": "configuration_nemotron_nas.DeciLMConfig",
                         "AutoModelForCausalLM": "modeling_nemotron_nas.DeciLMForCausalLM"},
        }

    def notes(self, arch: Arch, seq_length: int) -> List[str]:
        lines = [nas_padding.report(arch, nas_padding.plan(arch), seq_length)]
        if "ffn_mult" in self.ffn_fields(arch)[0]:
            lines.append("nemotron-nas: FFN widths as ffn_mult (multiples of 256): vLLM, SGLang, TensorRT-LLM and "
                         "megatron-core read them")
        else:
            odd = sorted({w for w in arch.ffn if w % FFN_MULT_MULTIPLE})
            lines.append(f"nemotron-nas: FFN widths {odd[:6]}{' ...' if len(odd) > 6 else ''} are not multiples of "
                         f"256, written as exact intermediate_size: vLLM-only (SGLang and TensorRT-LLM read ffn_mult; "
                         f"prune.final_multiple_of: 256 makes widths they read)")
        return lines

    def write_files(self, out_dir: Path) -> None:
        """The configuration and modeling files `auto_map` names, and the pap ones they build on."""
        for name in CODE_FILES:
            shutil.copy2(REMOTE_CODE / name, out_dir / name)
