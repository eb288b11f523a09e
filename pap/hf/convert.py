"""Hugging Face Llama checkpoints <-> pap (megatron-core dist_checkpointing) checkpoints.

Both directions run in one process at TP=1, PP=1. That is no limitation: megatron-core's
`dist_checkpointing` stores global tensors, so a checkpoint written here loads at any
TP/PP that divides the model, and a checkpoint saved at any TP/PP loads here.
"""

from __future__ import annotations

import dataclasses
import re
import shutil
import time
from pathlib import Path
from typing import Dict, Iterator, Optional, Tuple

import torch

from pap import checkpoint
from pap.arch import Arch
from pap.config import ConfigError, DataConfig, ModelConfig, PapConfig, ParallelConfig, validate
from pap.errors import PapError
from pap.hf import layout
from pap.hf.hf_config import hf_loadable_without_code, read_hf_config, write_hf_config
from pap.hf.weights import SafetensorsReader, ShardedSafetensorsWriter, torch_dtype

_LAYER = re.compile(r"^decoder\.layers\.(\d+)\.(.+)$")
_DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}


def _template(name: str) -> Tuple[str, Optional[int]]:
    """'decoder.layers.3.mlp.linear_fc2.weight' -> ('decoder.layers.{}.mlp.linear_fc2.weight', 3)."""
    match = _LAYER.match(name)
    if not match:
        return name, None
    return f"decoder.layers.{{}}.{match.group(2)}", int(match.group(1))


def _conversion_config(model: ModelConfig, tp: int = 1, pp: int = 1) -> PapConfig:
    return PapConfig(model=model, parallel=ParallelConfig(tp=tp, pp=pp), data=DataConfig(blend=["-"]))


def _single_process_megatron(seed: int = 0) -> None:
    from pap.distributed import init_distributed

    init_distributed(1, 1, seed)


# What marks a directory as one pap wrote: only those are ever replaced.
_MARKERS = {"checkpoint": ("latest_checkpointed_iteration.txt", "pap_state.json"), "export": ("pap_arch.json",)}


def check_output(out: str, kind: str, overwrite: bool, inputs=()) -> None:
    """Refuse an `--out` that would destroy something: an input or a directory holding one,
    or an existing non-empty directory unless `overwrite` is given and pap wrote it (`kind`:
    'checkpoint' or 'export'). Checked before any work."""
    final = Path(out).resolve()
    for source in inputs:
        source = Path(source).resolve()
        if final == source or final in source.parents:  # replacing --out would delete the input
            raise PapError(f"--out {out}: holds the input {source}; choose another output directory")
    if not final.exists() or (final.is_dir() and not any(final.iterdir())):
        return
    ours = final.is_dir() and any((final / marker).exists() for marker in _MARKERS[kind])
    if not overwrite:
        raise PapError(f"--out {out}: already exists; choose another directory"
                       + (" or pass --overwrite to replace this earlier pap " + kind if ours else ""))
    if not ours:
        raise PapError(f"--out {out}: exists and is not a pap {kind} ({' or '.join(_MARKERS[kind])} missing); "
                       f"pap replaces only what it wrote: choose another directory")


def _replace_dir(partial: Path, final: Path) -> None:
    if final.exists():
        shutil.rmtree(final)  # checked by check_output: empty, or an earlier pap output and --overwrite
    partial.rename(final)


# ---------------------------------------------------------------------------------------------
# Hugging Face -> megatron
# ---------------------------------------------------------------------------------------------
def megatron_tensor(name: str, hf: SafetensorsReader, arch: Arch) -> torch.Tensor:
    """Full (TP=1) megatron tensor `name`, assembled from the HF checkpoint."""
    template, layer = _template(name)
    if template in layout.DIRECT:
        tensor = hf.get(layout.DIRECT[template].format(layer))
    elif template == layout.QKV:
        tensor = layout.qkv_to_megatron(hf.get(layout.HF_Q.format(layer)), hf.get(layout.HF_K.format(layer)),
                                        hf.get(layout.HF_V.format(layer)), arch.heads_per_group[layer],
                                        arch.head_dim)
    elif template == layout.FC1:
        tensor = layout.fc1_to_megatron(hf.get(layout.HF_GATE.format(layer)), hf.get(layout.HF_UP.format(layer)))
    else:
        raise PapError(f"no Hugging Face source for megatron tensor {name}")
    if name in (layout.EMBEDDING, layout.OUTPUT) and tensor.shape[0] < arch.padded_vocab_size:
        padding = tensor.new_zeros(arch.padded_vocab_size - tensor.shape[0], tensor.shape[1])
        tensor = torch.cat([tensor, padding])  # rows no token id reaches; zero like Megatron-LM's converters
    return tensor


def hf_to_mcore(hf_dir: str, out: str, tp: int = 1, pp: int = 1, progress=print, overwrite: bool = False) -> Path:
    """Convert the HF Llama checkpoint in `hf_dir` to a pap checkpoint at `out`."""
    start = time.time()
    check_output(out, "checkpoint", overwrite, inputs=[hf_dir])
    arch, model_cfg, dtype_name = read_hf_config(hf_dir)
    try:
        validate(_conversion_config(model_cfg, tp, pp), source=f"{hf_dir} at --tp {tp} --pp {pp}")
    except ConfigError as exc:
        raise PapError(str(exc).replace("parallel.tp", "--tp").replace("parallel.pp", "--pp")) from None
    reader = SafetensorsReader(hf_dir)
    expected = _hf_names(arch)
    missing = sorted(set(expected) - set(reader.names()))
    if missing:
        raise PapError(f"{hf_dir}: tensor {missing[0]} is missing from the checkpoint"
                       + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    dtype = torch_dtype(dtype_name)
    from pap.model import build_model

    _single_process_megatron()
    model = build_model(arch, _conversion_config(model_cfg), dtype=dtype, initialize=False)
    with torch.no_grad():
        for name, param in model.named_parameters():
            tensor = megatron_tensor(name, reader, arch)
            if tensor.shape != param.shape:
                raise PapError(f"{hf_dir}: {name} should be {tuple(param.shape)} for this config.json, "
                               f"the checkpoint's tensors give {tuple(tensor.shape)}")
            param.copy_(tensor)
    del reader  # unmap the safetensors files before the save needs memory of its own
    progress(f"hf-to-mcore: read {arch.num_params():,} parameters ({dtype_name}) in {time.time() - start:.1f}s")
    final = Path(out)
    partial = final.with_name(final.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    config = {"model": {**dataclasses.asdict(model_cfg), "params_dtype": "bf16" if dtype == torch.bfloat16
                        else "fp32"}, "hf_dtype": dtype_name, "source": str(hf_dir)}
    checkpoint.save(str(partial), 0, 0, arch, model, None, None,
                    layout={"tp": tp, "pp": pp, "dp": 1, "distributed_optimizer": False}, config=config)
    _replace_dir(partial, final)
    progress(f"hf-to-mcore: wrote {final} in {time.time() - start:.1f}s (loads at any TP/PP dividing the model)")
    return final


def _hf_names(arch: Arch):
    names = [layout.DIRECT[layout.EMBEDDING], "model.norm.weight"]
    if not arch.tie_embeddings:
        names.append("lm_head.weight")
    for layer in range(arch.num_layers):
        for template in (layout.HF_Q, layout.HF_K, layout.HF_V, layout.HF_GATE, layout.HF_UP):
            names.append(template.format(layer))
        for template, hf_name in layout.DIRECT.items():
            if "{}" in template:
                names.append(hf_name.format(layer))
    return names


# ---------------------------------------------------------------------------------------------
# megatron -> Hugging Face
# ---------------------------------------------------------------------------------------------
def hf_tensors(full: Dict[str, torch.Tensor], arch: Arch, expand_kv: bool = False
               ) -> Iterator[Tuple[str, torch.Tensor]]:
    """(HF name, tensor) pairs for the full megatron tensors `full` (vocab padding removed).

    With `expand_kv`, the shapes of `layout.expanded_arch(arch)` (a plain Llama).
    """
    wide = layout.expanded_arch(arch)
    for name, tensor in full.items():
        template, layer = _template(name)
        if name in (layout.EMBEDDING, layout.OUTPUT):
            if name == layout.OUTPUT and arch.tie_embeddings:
                continue
            yield layout.DIRECT[name], tensor[: arch.vocab_size]
        elif template == layout.QKV:
            q, k, v = layout.qkv_from_megatron(tensor, arch.heads_per_group[layer], arch.head_dim)
            o = full[f"decoder.layers.{layer}.self_attention.linear_proj.weight"]
            if expand_kv:
                q, k, v, o = layout.expand_heads(q, k, v, o, arch.heads_per_group[layer], arch.head_dim,
                                                 wide.num_heads(layer))
            yield layout.HF_Q.format(layer), q
            yield layout.HF_K.format(layer), k
            yield layout.HF_V.format(layer), v
            yield layout.DIRECT["decoder.layers.{}.self_attention.linear_proj.weight"].format(layer), o
        elif template == layout.FC1:
            gate, up = layout.fc1_from_megatron(tensor)
            down = full[f"decoder.layers.{layer}.mlp.linear_fc2.weight"]
            if expand_kv:
                gate, up, down = layout.pad_ffn(gate, up, down, wide.ffn[layer])
            yield layout.HF_GATE.format(layer), gate
            yield layout.HF_UP.format(layer), up
            yield layout.DIRECT["decoder.layers.{}.mlp.linear_fc2.weight"].format(layer), down
        elif template in ("decoder.layers.{}.self_attention.linear_proj.weight",
                          "decoder.layers.{}.mlp.linear_fc2.weight"):
            continue  # written with linear_qkv / linear_fc1 above
        elif template in layout.DIRECT:
            yield layout.DIRECT[template].format(layer), tensor
        else:
            raise PapError(f"no Hugging Face name for megatron tensor {name}")


def mcore_to_hf(ckpt: str, out: str, tokenizer: Optional[str] = None, dtype: str = "auto",
                expand_kv: bool = False, progress=print, overwrite: bool = False) -> Path:
    """Export the pap checkpoint `ckpt` (any TP/PP it was saved with) as a HF model directory."""
    start = time.time()
    check_output(out, "export", overwrite, inputs=[ckpt] + ([tokenizer] if tokenizer else []))
    source = checkpoint.read(ckpt)
    arch = source.arch
    saved_model = source.config.get("model", {})
    known = {f.name for f in dataclasses.fields(ModelConfig)}
    model_cfg = ModelConfig(**{k: v for k, v in saved_model.items() if k in known})
    if tokenizer is not None and not Path(tokenizer).exists():
        raise PapError(f"--tokenizer {tokenizer}: no such file or directory")
    saved_dtype = torch.bfloat16 if model_cfg.params_dtype == "bf16" else torch.float32
    out_dtype = saved_dtype if dtype == "auto" else torch_dtype(dtype)
    from pap.model import build_model

    _single_process_megatron()
    # A bf16 run's checkpoint also holds fp32 masters: a wider export reads those, not their bf16 cast.
    build_dtype = torch.float32 if source.masters and out_dtype == torch.float32 else saved_dtype
    model = build_model(arch, _conversion_config(model_cfg), dtype=build_dtype, initialize=False)
    checkpoint.load_model(source, model)
    full = {name: tensor.detach() for name, tensor in model.state_dict().items() if not name.endswith("_extra_state")}
    final = write_hf_dir(full, arch, model_cfg, out, out_dtype, expand_kv, tokenizer)
    progress(f"mcore-to-hf: wrote {final} in {time.time() - start:.1f}s")
    return final


def write_hf_dir(full: Dict[str, torch.Tensor], arch: Arch, model_cfg: ModelConfig, out: str,
                 dtype: torch.dtype, expand_kv: bool = False, tokenizer: Optional[str] = None) -> Path:
    """Write full megatron tensors (global names) as a HF model directory, atomically.

    A plain `LlamaForCausalLM` when transformers can hold the shape, else pap's remote code.
    """
    import json

    arch_out = layout.expanded_arch(arch) if expand_kv else arch
    remote_code = not hf_loadable_without_code(arch_out)
    final = Path(out)
    partial = final.with_name(final.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        writer = ShardedSafetensorsWriter(partial)
        for name, tensor in hf_tensors(full, arch, expand_kv):
            writer.add(name, tensor.to(dtype))
        writer.close()
        hf_cfg = write_hf_config(arch_out, model_cfg, _DTYPE_NAMES[dtype], remote_code)
        (partial / "config.json").write_text(json.dumps(hf_cfg, indent=2))
        (partial / "pap_arch.json").write_text(arch.to_json())
        if remote_code:
            from pap.hf import remote

            remote.write_code(partial)
        if tokenizer is not None:
            _copy_tokenizer(Path(tokenizer), partial)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    _replace_dir(partial, final)
    return final


_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                    "vocab.json", "merges.txt", "added_tokens.json", "generation_config.json")


def _copy_tokenizer(source: Path, out: Path) -> None:
    if source.is_file():
        shutil.copy2(source, out / source.name)
        return
    copied = [f for f in _TOKENIZER_FILES if (source / f).is_file()]
    if not copied:
        raise PapError(f"--tokenizer {source}: no tokenizer files ({', '.join(_TOKENIZER_FILES[:4])}, ...) in it")
    for name in copied:
        shutil.copy2(source / name, out / name)
