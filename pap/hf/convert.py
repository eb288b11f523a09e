"""Hugging Face checkpoints <-> pap (megatron-core dist_checkpointing) checkpoints.

Both directions run in one process at TP=1, PP=1. That is no limitation: megatron-core's
`dist_checkpointing` stores global tensors, so a checkpoint written here loads at any
TP/PP that divides the model, and a checkpoint saved at any TP/PP loads here.

Which Hugging Face class is read or written, with its names, config.json and tensor
transforms, is an export family (`pap.hf.families`); this module only walks a family's
table, so it is the same for all of them.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Iterator, Optional, Tuple

import torch

from pap import checkpoint
from pap.arch import Arch
from pap.config import ConfigError, DataConfig, ModelConfig, PapConfig, ParallelConfig, validate
from pap.distributed import init_distributed
from pap.errors import PapError
from pap.hf.expand_kv import ExpandedState, expanded_arch
from pap.hf.families import ExportFamily, pick
from pap.hf.hf_config import read_hf_config
from pap.hf.megatron_names import EMBEDDING, OUTPUT, split_layer
from pap.hf.weights import SafetensorsReader, ShardedSafetensorsWriter, torch_dtype
from pap.model import build_model

_DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}


def _conversion_config(model: ModelConfig, tp: int = 1, pp: int = 1) -> PapConfig:
    return PapConfig(model=model, parallel=ParallelConfig(tp=tp, pp=pp), data=DataConfig(blend=["-"]))


def _single_process_megatron(seed: int = 0) -> None:
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
        if source in final.parents:  # the output would be written into the input
            raise PapError(f"--out {out}: is inside the input {source}; a conversion never writes into its "
                           f"input: choose a directory outside it")
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
def megatron_tensor(name: str, hf: SafetensorsReader, arch: Arch, family: ExportFamily) -> torch.Tensor:
    """Full (TP=1) megatron tensor `name`, assembled from the HF checkpoint of `family`."""
    template, layer = split_layer(name)
    found = family.mapping(template)
    if found is None:
        raise PapError(f"no Hugging Face source for megatron tensor {name}")
    entry, index = found
    hf_names = entry.hf_names(layer)
    return entry.transform.to_mcore(index, lambda i: hf.get(hf_names[i]), arch, layer)


def _check_tied_head(hf_dir: str, reader: SafetensorsReader, arch: Arch, family: ExportFamily) -> None:
    """A tied config whose files also store an output head (Llama's `lm_head.weight`): a tied
    model has no head of its own, so a stored head that differs from the embedding would be
    dropped. Refused."""
    (head,), (embedding,) = family.hf_names_of(OUTPUT), family.hf_names_of(EMBEDDING)
    names = set(reader.names())
    if not arch.tie_embeddings or head not in names or embedding not in names:
        return
    if not torch.equal(reader.get(head), reader.get(embedding)):
        raise PapError(f"{hf_dir}: config.json says tie_word_embeddings=true but the checkpoint stores an {head} "
                       f"that differs from {embedding}, which a tied conversion would drop; set "
                       f"tie_word_embeddings=false in config.json to convert the model untied, or delete {head} "
                       f"from the checkpoint if the tied embedding is meant")


def hf_to_mcore(hf_dir: str, out: str, tp: int = 1, pp: int = 1, progress=print, overwrite: bool = False) -> Path:
    """Convert the HF checkpoint in `hf_dir` (of a family that `imports`) to a pap checkpoint at `out`."""
    start = time.time()
    check_output(out, "checkpoint", overwrite, inputs=[hf_dir])
    family, arch, model_cfg, dtype_name = read_hf_config(hf_dir)
    try:
        validate(_conversion_config(model_cfg, tp, pp), source=f"{hf_dir} at --tp {tp} --pp {pp}")
    except ConfigError as exc:
        raise PapError(str(exc).replace("parallel.tp", "--tp").replace("parallel.pp", "--pp")) from None
    reader = SafetensorsReader(hf_dir)
    expected = family.hf_names(arch)
    missing = sorted(set(expected) - set(reader.names()))
    if missing:
        raise PapError(f"{hf_dir}: tensor {missing[0]} is missing from the checkpoint"
                       + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    _check_tied_head(hf_dir, reader, arch, family)
    dtype = torch_dtype(dtype_name)
    _single_process_megatron()
    model = build_model(arch, _conversion_config(model_cfg), dtype=dtype, initialize=False)
    with torch.no_grad():
        for name, param in model.named_parameters():
            tensor = megatron_tensor(name, reader, arch, family)
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


# ---------------------------------------------------------------------------------------------
# megatron -> Hugging Face
# ---------------------------------------------------------------------------------------------
def hf_tensors(full: Mapping, arch: Arch, family: ExportFamily) -> Iterator[Tuple[str, torch.Tensor]]:
    """(HF name, tensor) pairs of `family` for the full megatron tensors `full` of `arch`
    (vocab padding removed), in the order of `full`."""
    for name in full:
        template, layer = split_layer(name)
        found = family.mapping(template)
        if found is None:
            raise PapError(f"no Hugging Face name for megatron tensor {name}")
        entry, index = found
        if index > 0 or not entry.present(arch, layer):
            continue  # written with the first tensor of its map, or a tensor the family does not have
        mcore = [full[mcore_name.format(layer)] for mcore_name in entry.mcore]
        yield from zip(entry.hf_names(layer), entry.transform.to_hf(mcore, arch, layer))


def mcore_to_hf(ckpt: str, out: str, tokenizer: Optional[str] = None, dtype: str = "auto",
                expand_kv: bool = False, progress=print, overwrite: bool = False,
                family: Optional[str] = None) -> Path:
    """Export the pap checkpoint `ckpt` (any TP/PP it was saved with) as a HF model directory,
    of export family `family` (a `pap.hf.families.FAMILIES` key; default: the first that fits)."""
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
    _single_process_megatron()
    # A bf16 run's checkpoint also holds fp32 masters: a wider export reads those, not their bf16 cast.
    build_dtype = torch.float32 if source.masters and out_dtype == torch.float32 else saved_dtype
    model = build_model(arch, _conversion_config(model_cfg), dtype=build_dtype, initialize=False)
    checkpoint.load_model(source, model)
    full = {name: tensor.detach() for name, tensor in model.state_dict().items() if not name.endswith("_extra_state")}
    final = write_hf_dir(full, arch, model_cfg, out, out_dtype, expand_kv, tokenizer, family)
    arch_out = expanded_arch(arch) if expand_kv else arch
    seq_length = int(source.config.get("data", {}).get("seq_length") or 2048)
    for line in pick(arch_out, family).notes(arch_out, seq_length):
        progress(f"mcore-to-hf: {line}")
    progress(f"mcore-to-hf: wrote {final} in {time.time() - start:.1f}s")
    return final


def write_hf_dir(full: Mapping, arch: Arch, model_cfg: ModelConfig, out: str, dtype: torch.dtype,
                 expand_kv: bool = False, tokenizer: Optional[str] = None, family: Optional[str] = None) -> Path:
    """Write full megatron tensors (global names) as a HF model directory, atomically.

    Written as export family `family`, or by default the first that holds the shape: a plain
    `LlamaForCausalLM` when transformers can, else pap's remote code. With `expand_kv`, the
    model of `pap.hf.expand_kv.expanded_arch(arch)` that computes the same function.
    """
    arch_out = arch
    if expand_kv:
        full = ExpandedState(full, arch)
        arch_out = full.wide
    chosen = pick(arch_out, family)
    final = Path(out)
    partial = final.with_name(final.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        writer = ShardedSafetensorsWriter(partial)
        for name, tensor in hf_tensors(full, arch_out, chosen):
            writer.add(name, tensor.to(dtype))
        writer.close()
        hf_cfg = chosen.config(arch_out, model_cfg, _DTYPE_NAMES[dtype])
        (partial / "config.json").write_text(json.dumps(hf_cfg, indent=2))
        (partial / "pap_arch.json").write_text(arch.to_json())
        chosen.write_files(partial)
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
