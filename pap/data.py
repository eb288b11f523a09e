"""Training and validation batches from Megatron indexed datasets.

Datasets are megatron-core `GPTDataset`s (blended with `BlendedMegatronDatasetBuilder`,
whose C++ index helper ships prebuilt in the megatron-core wheel). Sample order is a pure
function of (seed, iteration), so a resumed run sees exactly the batches an uninterrupted
run would, whatever the data-parallel size: global batch `i` is samples
`[i * global_batch, (i + 1) * global_batch)`, and data-parallel rank `r` takes slice `r`
of every `micro_batch * dp` block, as Megatron-LM's pretraining sampler does.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch

from data_prep.index import read_index, validate_pair
from pap.config import PapConfig, parse_blend
from pap.errors import PapError

# Above this size a dataset without a metadata sidecar is not scanned for its largest token id.
_MAX_SCAN_BYTES = 2 << 30


def metadata_path(prefix: str) -> Path:
    """Sidecar written by `data_prep` next to `{prefix}.bin/.idx` (tokenizer, vocab size, counts)."""
    return Path(prefix + ".meta.json")


def require_dataset(prefix: str, key: str) -> None:
    """Fail with one line naming `key` (the config field or flag) if `prefix.bin/.idx` are missing."""
    missing = [p for p in (prefix + ".bin", prefix + ".idx") if not os.path.isfile(p)]
    if missing:
        raise PapError(f"{key}: dataset prefix {prefix!r} not found (missing {', '.join(missing)}); "
                       f"give the path without .bin/.idx, e.g. data/corpus_text_document")


def check_dataset(prefix: str, model_vocab_size: int) -> None:
    """Fail with one clear line if `prefix` is missing, its `.bin` does not match its `.idx`, or it
    holds token ids the model cannot embed."""
    require_dataset(prefix, "data.blend")
    # `pap.train` checks before the process group exists and the trainer again when it builds
    # the datasets: one pass over the index per process is enough while the files are unchanged.
    stamp = (prefix, model_vocab_size) + tuple((os.stat(p).st_size, os.stat(p).st_mtime_ns)
                                                for p in (prefix + ".bin", prefix + ".idx"))
    if stamp in _CHECKED:
        return
    validate_pair(prefix)  # the .bin belongs to the .idx: sizes, dtype, offsets, documents
    needed = dataset_vocabulary(prefix)
    if needed is not None and needed.size > model_vocab_size:
        raise PapError(f"data.blend: {prefix} {needed.evidence} but model.vocab_size is {model_vocab_size}; "
                       f"set model.vocab_size >= {needed.size}" + ("" if needed.declared else " or re-tokenize"))
    _CHECKED.add(stamp)


_CHECKED: set = set()


@dataclass
class DatasetVocabulary:
    """The smallest vocabulary that embeds a dataset, and how that is known."""

    size: int
    evidence: str
    """For an error line: 'was tokenized with a vocabulary of N (meta file)' or 'contains token id N'."""
    declared: bool
    """True when the metadata sidecar says it; False when a scan of the tokens found it."""


SPLIT_NAMES = ("training", "validation", "test")


def split_tokens(prefix: str, split: str) -> List[int]:
    """Tokens of `prefix` in each part of `split` ("98,2,0"), cut as megatron-core's dataset
    builder cuts a GPT dataset: by sequence, at round(cumulative fraction x sequences)."""
    parts = [float(x) for x in split.replace("/", ",").split(",")]
    lengths = read_index(prefix).sequence_lengths
    n, total, bounds = len(lengths), sum(parts), [0.0]
    for part in parts:
        bounds.append(bounds[-1] + part / total)
    cuts = [int(round(b * float(n))) for b in bounds]
    return [int(lengths[cuts[i]:cuts[i + 1]].sum(dtype=np.int64)) for i in range(len(parts))]


def check_samples_fit(prefix: str, seq_length: int, split: str, parts, key: str, fix: str) -> None:
    """Each split part in `parts` (0 training, 1 validation) of `prefix` must hold one sample:
    `seq_length` + 1 tokens. Fewer would make megatron-core's dataset builder loop forever
    looking for enough epochs, so it is refused first, naming `key`, the prefix and both numbers."""
    tokens = split_tokens(prefix, split)
    for part in parts:
        if tokens[part] < seq_length + 1:
            raise PapError(f"{key}: {prefix} holds {tokens[part]:,} tokens in its {SPLIT_NAMES[part]} split "
                           f"(split {split}), fewer than one sample of {seq_length} + 1 tokens; {fix}")


def dataset_vocabulary(prefix: str) -> Optional[DatasetVocabulary]:
    """What vocabulary `prefix`'s tokens need: the sidecar's `vocab_size`, else the largest id
    + 1 from a scan of the `.bin`; None when there is no sidecar and the file is too large to
    scan (data_prep always writes the sidecar). A damaged sidecar is one clear error."""
    meta = metadata_path(prefix)
    if meta.is_file():
        try:
            vocab = int(json.loads(meta.read_text())["vocab_size"])
        except (ValueError, KeyError, TypeError):
            raise PapError(f"{meta}: not a valid dataset metadata file (needs an integer 'vocab_size')") from None
        return DatasetVocabulary(vocab, f"was tokenized with a vocabulary of {vocab} ({meta})", True)
    bin_path = prefix + ".bin"
    if os.path.getsize(bin_path) > _MAX_SCAN_BYTES:
        return None
    tokens = np.memmap(bin_path, dtype=index_dtype(prefix), mode="r")
    largest = int(tokens.max()) if tokens.size else -1
    return DatasetVocabulary(largest + 1, f"contains token id {largest}", False)


# megatron-core indexed_dataset.py: b"MMIDIDX\x00\x00", version <Q (1), dtype code <B.
_INDEX_HEADER = b"MMIDIDX\x00\x00"
_DTYPE_CODES = {1: np.uint8, 2: np.int8, 3: np.int16, 4: np.int32, 5: np.int64, 6: np.float64,
                7: np.float32, 8: np.uint16}


def index_dtype(prefix: str):
    """Token dtype recorded in `{prefix}.idx` (read without importing megatron)."""
    path = prefix + ".idx"
    with open(path, "rb") as f:
        header = f.read(len(_INDEX_HEADER) + 9)
    if not header.startswith(_INDEX_HEADER) or len(header) < len(_INDEX_HEADER) + 9:
        raise PapError(f"{path}: not a Megatron indexed-dataset index (bad header); re-create it with data_prep")
    code = header[-1]
    if code not in _DTYPE_CODES:
        raise PapError(f"{path}: unknown token dtype code {code}; re-create it with data_prep")
    return _DTYPE_CODES[code]


class TokenizerInfo:
    """What `GPTDataset` reads of a tokenizer: ids only; texts are never decoded here."""

    def __init__(self, vocab_size: int):
        self.vocab_size = vocab_size
        self.eod = 0
        self.pad = -1  # no padding token: every sample is a full window of real tokens
        # The class name megatron's data-cache hashes were first written with: kept, so
        # existing caches stay valid.
        self.unique_identifiers = {"class": "pap.data._TokenizerInfo", "vocab_size": vocab_size}


def build_datasets(cfg: PapConfig, train_samples: int, valid_samples: int, cache_dir: Optional[str]):
    """(train, valid) megatron `GPTDataset` / `BlendedDataset` objects (valid may be None)."""
    from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
    from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig

    prefixes, weights = parse_blend(cfg.data.blend)
    for prefix in prefixes:
        check_dataset(prefix, cfg.model.vocab_size)
        check_corpus_size(cfg, prefix, valid_samples > 0)
    if cache_dir and _builds_cache_first():
        # Only the rank that writes the cache checks it: megatron builds the indices on
        # global rank 0 first and the other ranks read them after a barrier, so a check on
        # another rank could read a file rank 0 is still writing and call it damaged.
        check_data_cache(cache_dir)
    dataset_config = GPTDatasetConfig(
        random_seed=cfg.train.seed,
        sequence_length=cfg.data.seq_length,
        blend=(prefixes, weights),
        split=cfg.data.split,
        path_to_cache=cache_dir,
        tokenizer=TokenizerInfo(cfg.model.vocab_size),
        reset_position_ids=False,
        reset_attention_mask=False,
        eod_mask_loss=False,
        create_attention_mask=False,  # causal masking happens inside attention
    )
    train, valid, _ = BlendedMegatronDatasetBuilder(
        GPTDataset, [train_samples, valid_samples, 0], lambda: True, dataset_config
    ).build()
    if train is None:
        raise PapError(f"data.split={cfg.data.split!r} leaves no training data")
    return train, valid


def check_corpus_size(cfg: PapConfig, prefix: str, validating: bool) -> None:
    """`prefix`'s training split (and validation split, when validating) holds at least one
    sample of `data.seq_length`."""
    check_samples_fit(prefix, cfg.data.seq_length, cfg.data.split, (0, 1) if validating else (0,), "data.blend",
                      "use a larger corpus, a smaller data.seq_length or another data.split"
                      + (" (or train.eval_iters=0)" if validating else ""))


def _builds_cache_first() -> bool:
    """True on the rank megatron's dataset builder runs first (global rank 0, or no process group)."""
    import torch.distributed as dist

    return not dist.is_initialized() or dist.get_rank() == 0


def check_data_cache(cache_dir: str) -> None:
    """Fail with one line naming the file if a cached sample index is damaged.

    megatron-core writes its document, sample and shuffle indices (`*.npy`) into the data
    cache once and reads them on every later start; a run killed while they were written
    leaves a truncated file that would fail every restart deep inside megatron.
    """
    for path in sorted(Path(cache_dir).rglob("*.npy")):
        try:
            np.load(path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise PapError(f"{path}: damaged data-cache file ({str(exc).splitlines()[0][:120]}), probably left by "
                           f"a run killed while writing it; delete it (megatron-core rebuilds it on the next "
                           f"start)") from None


class Batches:
    """Micro batches of one data-parallel rank for a given global batch."""

    FIELDS = ("tokens", "labels", "loss_mask", "position_ids")

    def __init__(self, dataset, micro_batch_size: int, global_batch_size: int, dp_rank: int, dp_size: int):
        per_step = micro_batch_size * dp_size
        if global_batch_size % per_step:
            raise PapError(f"train.global_batch_size ({global_batch_size}) must be a multiple of "
                           f"train.micro_batch_size * data-parallel size ({micro_batch_size} * {dp_size})")
        self.dataset = dataset
        self.micro_batch_size = micro_batch_size
        self.global_batch_size = global_batch_size
        self.dp_rank = dp_rank
        self.dp_size = dp_size
        self.num_microbatches = global_batch_size // per_step

    def microbatches(self, consumed_samples: int) -> List[Dict[str, torch.Tensor]]:
        """The micro batches this rank processes for the global batch that starts after
        `consumed_samples` samples (iteration i starts at i * global_batch_size)."""
        start = consumed_samples
        out = []
        for m in range(self.num_microbatches):
            first = start + (m * self.dp_size + self.dp_rank) * self.micro_batch_size
            samples = [self.dataset[(first + i) % len(self.dataset)] for i in range(self.micro_batch_size)]
            out.append({k: torch.stack([torch.as_tensor(s[k]) for s in samples]) for k in self.FIELDS})
        return out


class _Steps(torch.utils.data.Dataset):
    """Item i: the micro batches of training step i (what `Batches.microbatches` gives)."""

    def __init__(self, batches: Batches):
        self.batches = batches

    def __len__(self) -> int:
        return 1 << 62  # indexed by step; the sampler decides which

    def __getitem__(self, step: int) -> List[Dict[str, torch.Tensor]]:
        return self.batches.microbatches(step * self.batches.global_batch_size)


class BatchStream:
    """Training batches step after step, prepared ahead by DataLoader worker processes.

    With `workers == 0` each step's batch is read when asked for, in the training process.
    With workers, a `torch.utils.data.DataLoader` reads the next `workers x prefetch`
    steps' samples in the background (and pins them for the copy to the GPU), in the same
    order: step i is always `Batches.microbatches(i * global_batch)`, so losses and resumes
    do not depend on the setting. Asking for another step than the next one (a resume, a
    test) restarts the workers there.
    """

    def __init__(self, batches: Batches, workers: int = 0, prefetch: int = 2, pin_memory: bool = False):
        self.batches = batches
        self.workers, self.prefetch = workers, prefetch
        self.pin_memory = pin_memory and torch.cuda.is_available()
        self._iterator = None
        self._next_step: Optional[int] = None

    def microbatches(self, consumed_samples: int) -> List[Dict[str, torch.Tensor]]:
        """The micro batches of the step that starts after `consumed_samples` samples."""
        global_batch = self.batches.global_batch_size
        if self.workers == 0 or consumed_samples % global_batch:
            return self.batches.microbatches(consumed_samples)
        step = consumed_samples // global_batch
        if step != self._next_step:
            self._start(step)
        self._next_step = step + 1
        return next(self._iterator)

    def _start(self, step: int) -> None:
        self.close()
        loader = torch.utils.data.DataLoader(
            _Steps(self.batches), batch_size=None, sampler=_From(step), num_workers=self.workers,
            prefetch_factor=self.prefetch, pin_memory=self.pin_memory)
        self._iterator = iter(loader)

    def close(self) -> None:
        """Stop the worker processes (they also stop when the stream is garbage collected)."""
        self._iterator = None
        self._next_step = None


class _From(torch.utils.data.Sampler):
    """Step indices from `first` on, without end."""

    def __init__(self, first: int):
        self.first = first

    def __iter__(self):
        step = self.first
        while True:
            yield step
            step += 1
