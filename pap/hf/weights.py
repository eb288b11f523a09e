"""Reading and writing Hugging Face safetensors checkpoints, one tensor at a time."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, Iterable, Tuple

import torch

from pap.errors import PapError

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"


class SafetensorsReader:
    """Lazy access to the tensors of a (possibly sharded) safetensors checkpoint."""

    def __init__(self, hf_dir: str):
        from safetensors import safe_open

        root = Path(hf_dir)
        if (root / INDEX).is_file():
            try:
                weight_map: Dict[str, str] = json.loads((root / INDEX).read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError):
                raise PapError(f"{root / INDEX}: not a valid safetensors index (needs 'weight_map')") from None
            files = sorted(set(weight_map.values()))
        elif (root / SINGLE).is_file():
            files, weight_map = [SINGLE], None
        else:
            raise PapError(f"{hf_dir}: no {SINGLE} or {INDEX}; only safetensors checkpoints convert")
        missing = [f for f in files if not (root / f).is_file()]
        if missing:
            raise PapError(f"{root}: shard {missing[0]} named in {INDEX} is missing"
                           + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
        self._handles = {}
        for f in files:
            try:
                self._handles[f] = safe_open(str(root / f), framework="pt")
            except Exception as exc:  # safetensors' SafetensorError (truncated or not safetensors at all)
                raise PapError(f"{root / f}: not a readable safetensors file ({str(exc).splitlines()[0][:120]}); "
                               f"the download or copy may be incomplete: fetch the file again") from None
        if weight_map is None:
            weight_map = {name: SINGLE for name in self._handles[SINGLE].keys()}
        self.weight_map = weight_map
        self.root = root

    def names(self) -> Iterable[str]:
        return self.weight_map.keys()

    def get(self, name: str) -> torch.Tensor:
        if name not in self.weight_map:
            raise PapError(f"{self.root}: tensor {name} is missing from the checkpoint")
        return self._handles[self.weight_map[name]].get_tensor(name)


class ShardedSafetensorsWriter:
    """Writes tensors into shards of at most `max_shard_bytes`, then the index.

    Tensors are flushed shard by shard, so host memory holds one shard at a time.
    """

    def __init__(self, out_dir: Path, max_shard_bytes: int = 2 << 30):
        self.out_dir = out_dir
        self.max_shard_bytes = max_shard_bytes
        self._pending: Dict[str, torch.Tensor] = {}
        self._pending_bytes = 0
        self._shards: list = []
        self._weight_map: Dict[str, int] = {}
        self.total_bytes = 0

    def add(self, name: str, tensor: torch.Tensor) -> None:
        size = tensor.numel() * tensor.element_size()
        if self._pending and self._pending_bytes + size > self.max_shard_bytes:
            self._flush()
        self._pending[name] = tensor.contiguous()
        self._pending_bytes += size
        self.total_bytes += size

    def _flush(self) -> None:
        from safetensors.torch import save_file

        index = len(self._shards)
        path = self.out_dir / f"model-{index:05d}.safetensors"
        save_file(self._pending, str(path), metadata={"format": "pt"})
        self._shards.append(path)
        for name in self._pending:
            self._weight_map[name] = index
        self._pending, self._pending_bytes = {}, 0

    def close(self) -> None:
        if self._pending:
            self._flush()
        count = len(self._shards)
        if count == 1:
            self._shards[0].rename(self.out_dir / SINGLE)
            return
        names = {}
        for i, path in enumerate(self._shards):
            final = self.out_dir / f"model-{i + 1:05d}-of-{count:05d}.safetensors"
            path.rename(final)
            names[i] = final.name
        index = {"metadata": {"total_size": self.total_bytes},
                 "weight_map": {name: names[i] for name, i in sorted(self._weight_map.items())}}
        (self.out_dir / INDEX).write_text(json.dumps(index, indent=2))


def torch_dtype(name: str) -> torch.dtype:
    """'bfloat16' / 'float32' / 'float16' (HF config spelling) -> torch dtype."""
    table: Tuple = (("bfloat16", torch.bfloat16), ("float32", torch.float32), ("float16", torch.float16))
    for key, dtype in table:
        if name == key:
            return dtype
    raise PapError(f"unsupported dtype {name!r}; use one of bfloat16, float16, float32")
