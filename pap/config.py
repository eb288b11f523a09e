"""The one configuration tree of a pap run, loaded from YAML plus dotted overrides.

    cfg = load_config("configs/tiny.yaml", ["parallel.tp=2", "train.iters=6"])

Every field carries a docstring (megatron's `TransformerConfig` style). Unknown keys,
values of the wrong type and inconsistent settings raise `ConfigError` naming the key.
Megatron's own argument names appear only in `pap.model` / `pap.trainer`, where these
fields are handed to megatron-core.
"""

from __future__ import annotations

import dataclasses
import math
import signal
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from pap.errors import PapError


class ConfigError(PapError):
    """A config key that does not exist, or a value that is not valid for it."""


@dataclass
class ModelConfig:
    """The dense architecture a run starts from (Llama-style GPT)."""

    vocab_size: int = 4096
    """Tokenizer vocabulary size. The embedding is padded up to a multiple of
    `make_vocab_size_divisible_by` (padding independent of TP, so checkpoints reshard)."""
    make_vocab_size_divisible_by: int = 128
    """Pad the embedding rows to a multiple of this."""
    hidden_size: int = 256
    """Model (residual stream) width."""
    num_layers: int = 4
    """Number of transformer layers."""
    num_attention_heads: int = 8
    """Query heads per layer."""
    num_query_groups: int = 4
    """Key/value heads per layer (GQA); must divide num_attention_heads."""
    head_dim: Optional[int] = None
    """Width of one attention head; default hidden_size // num_attention_heads."""
    ffn_hidden_size: int = 704
    """SwiGLU intermediate width."""
    tie_embeddings: bool = False
    """Share the input embedding and the output layer weights."""
    rope_theta: float = 10000.0
    """RoPE base."""
    norm_eps: float = 1e-5
    """RMSNorm epsilon."""
    init_std: float = 0.02
    """Std of the normal initialisation of the weights."""
    params_dtype: str = "fp32"
    """fp32, or bf16 weights with fp32 master weights in the optimizer (what GPU runs use;
    also runs on CPU, slowly)."""
    transformer_impl: str = "auto"
    """local (torch modules), te (= transformer_engine: Transformer Engine, required), or
    auto (TE when it imports and there is a CUDA device). The choice and its reason are
    logged at start."""
    gradient_accumulation_fusion: bool = False
    """Accumulate weight gradients into the fp32 main grads inside the GEMM (TE or apex
    kernel; GPU only: requested on CPU it is turned off, and said so at start)."""
    rope_fusion: bool = False
    """Fused RoPE kernel (GPU only, as above)."""
    swiglu_fusion: bool = False
    """Fused SwiGLU activation kernel (GPU only, as above)."""
    recompute: str = "none"
    """Activation recomputation: none; selective (core attention only: cheap, saves the
    largest activations when attention is not flash); full (whole layers, `recompute_num_layers`
    at a time: least memory, ~30% more compute)."""
    recompute_num_layers: int = 1
    """With `recompute: full`: layers per recomputed chunk."""


@dataclass
class ParallelConfig:
    """How the model is split over ranks. Data parallel size = world size / (tp * pp)."""

    tp: int = 1
    """Tensor-parallel size; must divide heads, query groups and ffn width."""
    pp: int = 1
    """Pipeline-parallel size; must divide num_layers."""
    sequence_parallel: bool = False
    """Megatron sequence parallelism (tp > 1 only)."""
    distributed_optimizer: bool = False
    """Shard optimizer state over data-parallel ranks (megatron's DistributedOptimizer).
    Checkpoints hold full tensors either way, so either optimizer resumes from them."""
    overlap_grad_reduce: bool = False
    """Reduce each gradient bucket over DP as soon as backward has filled it, overlapping
    communication with the rest of backward."""
    overlap_param_gather: bool = False
    """With the distributed optimizer (and `overlap_grad_reduce`): all-gather the updated
    params bucket by bucket during the next forward instead of at the end of the step.
    pap synchronises them before anything reads them outside a forward (a pruning round, a
    checkpoint save)."""
    bucket_size: Optional[int] = None
    """Parameters per gradient bucket when overlapping; unset: megatron's default,
    max(40M, 1M x DP)."""


@dataclass
class TrainConfig:
    """The optimisation loop."""

    iters: int = 200
    """Number of optimizer steps."""
    micro_batch_size: int = 4
    """Sequences per micro batch per data-parallel rank."""
    global_batch_size: int = 16
    """Sequences per optimizer step; a multiple of micro_batch_size * data-parallel size."""
    lr: float = 3e-3
    """Peak learning rate."""
    min_lr: float = 3e-4
    """Learning rate at the end of the decay."""
    warmup_iters: int = 20
    """Linear warm-up steps from 0 to lr."""
    lr_decay_style: str = "cosine"
    """cosine, linear or constant decay after warm-up."""
    lr_decay_iters: Optional[int] = None
    """Steps over which lr decays; default iters."""
    weight_decay: float = 0.1
    """AdamW weight decay (not on norms or biases)."""
    adam_beta1: float = 0.9
    """Adam beta1."""
    adam_beta2: float = 0.95
    """Adam beta2."""
    adam_eps: float = 1e-8
    """Adam epsilon."""
    clip_grad: float = 1.0
    """Clip the global gradient norm to this (0 turns clipping off)."""
    seed: int = 1234
    """Seed for weights and data order."""
    eval_interval: int = 50
    """Run validation every this many steps (0: only at the end)."""
    eval_iters: int = 4
    """Global batches per validation (0: no validation)."""
    exit_file: Optional[str] = None
    """When this file appears (checked after every step), save a checkpoint, delete the file
    and exit with status 0: how a preempted Slurm job stops cleanly (see launch/)."""
    exit_signal: Optional[str] = "SIGUSR1"
    """A signal that, sent to the training processes, does the same as `exit_file` (None: off)."""


@dataclass
class DataConfig:
    """Megatron indexed datasets and how samples are drawn from them."""

    blend: list = field(default_factory=list)
    """Dataset prefixes (`path/name_text_document`), optionally weighted:
    [prefix] or [w1, prefix1, w2, prefix2, ...] as in Megatron's --data-path."""
    split: str = "98,2,0"
    """Train/valid/test split of every dataset, in parts."""
    seq_length: int = 256
    """Tokens per sample."""
    cache_dir: Optional[str] = None
    """Where dataset index caches go; default `<checkpoint.dir>/data_cache` or none."""
    num_workers: int = 0
    """DataLoader worker processes that read the next steps' samples in the background
    (0: read in the training process when needed). The order is the same either way."""
    prefetch_factor: int = 2
    """With workers: steps each worker reads ahead."""
    pin_memory: bool = True
    """With workers on a GPU: pin the batches for asynchronous host-to-device copies."""


@dataclass
class LogConfig:
    """Console and TensorBoard output."""

    interval: int = 10
    """Print one progress line every this many steps."""
    tensorboard_dir: Optional[str] = None
    """TensorBoard event directory; default `<checkpoint.dir>/tensorboard` when a checkpoint dir is set."""
    metrics_file: Optional[str] = None
    """JSON-lines file with one record per step (iteration, loss, lr, grad_norm) and per
    validation; default `<checkpoint.dir>/metrics.jsonl`. Appended to on resume. One run at a
    time writes it: a file outside `checkpoint.dir` is locked (`<file>.lock`) for the run's life."""


@dataclass
class CheckpointConfig:
    """Saving and auto-resume (one directory for both, as Megatron-LM users expect)."""

    dir: Optional[str] = None
    """Checkpoint directory; a run resumes from the latest complete checkpoint in it."""
    save_interval: int = 0
    """Save every this many steps (0: only at the end)."""
    save_at_end: bool = True
    """Save after the last step."""
    init_from: Optional[str] = None
    """Start from the weights (and Arch) of this pap checkpoint, e.g. one made by
    `python -m pap.convert hf-to-mcore`, when `dir` holds no checkpoint yet."""
    save_pruned: bool = True
    """Save a checkpoint when the pruning target is reached, linked as `<dir>/pruned`."""
    fallback: bool = False
    """When the newest checkpoint fails its checksums, resume from the newest complete one
    that passes (instead of stopping with an error naming the damaged file)."""
    allow_changes: list = field(default_factory=list)
    """Settings a resume may change although they make the run another one (e.g.
    [data.seq_length, prune.target_params]); each change is applied and logged. Settings
    such as train.lr are applied and logged without being listed; docs/RELIABILITY.md has
    the table (`pap.resume_settings`)."""
    rollback: bool = False
    """Resume from the checkpoint the tracker file names even when newer complete checkpoints
    were written before it (they are replaced as the run saves again)."""


@dataclass
class PruneConfig:
    """Pruning-aware pretraining: interleave gradient steps with removals of minimal groups."""

    enabled: bool = False
    """Prune while training until the parameter target is reached."""
    metric: str = "mix"
    """Element saliency: first (|w g|), mix (|w g - w^2 F / 2|) or obd (|w^2 F / 2|)."""
    target_params: float = 0.5
    """Stop pruning at this many parameters (> 1) or this fraction of the starting count (<= 1)."""
    grad_steps: int = 1
    """Gradient steps (k) whose mean saliency feeds each round of pruning."""
    prune_steps: int = 1
    """Minimal groups removed (p) per round."""
    normalize: Optional[str] = None
    """None: raw candidate sums (the paper's default); params: divide by parameters removed."""
    min_heads: int = 1
    """Never prune a layer below this many query heads."""
    min_kv_heads: int = 1
    """Never prune a layer below this many KV heads (at least parallel.tp when tp > 1)."""
    min_ffn: int = 1
    """Never prune a layer's FFN below this width."""
    min_hidden: int = 1
    """Never prune the hidden size below this."""
    final_multiple_of: int = 1
    """When the target is reached, the same round also removes the least salient extra FFN
    and hidden channels until those widths are multiples of this (e.g. 64: GEMMs at widths
    like 8191 miss the fastest kernels for the whole continued stage). 1: off. Under TP a
    rank's FFN width is ffn / tp, so 64 x tp keeps every rank's GEMMs aligned. The
    removals are logged like any other."""
    update: str = "none"
    """What happens to the surviving weights at a removal: none (EfficientLLM-A: the removed
    weights just go) or obs (EfficientLLM-B: a second-order update of the layer whose input
    columns go, from the layer-input Hessian of the window's sampled tokens; docs/PRUNING.md)."""
    hessian_tokens: int = 4096
    """update=obs: tokens per optimizer step sampled into the layer-input Hessians, spread
    evenly over the global batch's sequences (at least one position per sequence). 4096:
    a 9-step window then fits about 4 tokens per input of an 8,192-wide `linear_fc2`, where
    the held-out error comes close to its many-token value (docs/BENCHMARKS.md, "OBS update
    against sampled tokens")."""
    hessian_damp: float = 0.01
    """update=obs: dampening λ; the update solves with H + λ·mean(diag H)·I."""
    hessian_holdout: float = 0.125
    """update=obs: fraction of the sampled positions held out of H (at most 0.5), on which
    the round reports the update's error (`obs_error`): out of sample. 0: none held out (H
    from every sampled token; the reported error is then in-sample)."""
    layers: str = "uniform"
    """How removals spread over layers: uniform (one head or FFN channel of every layer at
    once, EfficientLLM; all layers keep equal widths), greedy (the least salient single head or
    FFN channel of one layer, or hidden channel) or adaptive (Adapt-Pruner: increments of
    prune.increment of the parameters, spread by per-layer targets from each layer's
    input/output cosine similarity; needs metric=first). docs/PRUNING.md."""
    increment: float = 0.02
    """layers=adaptive: delta, what each increment adds (one increment per prune.grad_steps
    optimizer steps; prune.prune_steps is not used). adapt_rule=published: to every layer's
    cumulative sparsity relative to the source widths (Adapt-Pruner's 0.02); scaled: the
    fraction of the current parameters the increment removes."""
    adapt_amplitude: float = 0.02
    """layers=adaptive: A. published: s_l <- clip(s_l + increment - A z_l, 0, 0.99), z_l the
    layer's normalised importance in [-1, 1] (Adapt-Pruner's 0.02); scaled: A in [0, 1),
    layer sparsities within [(1-A), (1+A)] x the increment's mean."""
    adapt_rule: str = "published"
    """layers=adaptive: published (Adapt-Pruner's additive, cumulative update relative to the
    source model's widths) or scaled (each increment removes prune.increment of the current
    parameters, spread by 1 - A z_l). docs/METHOD.md §8."""
    adapt_unit: str = "group"
    """layers=adaptive: the attention unit removed, group (a whole KV group with its query
    heads, as Adapt-Pruner) or head (one query head; its KV head goes with the group's last)."""
    adapt_score: str = "coupled"
    """layers=adaptive: what scores a head or FFN channel inside a layer. coupled (as
    Adapt-Pruner: |w g| summed over every weight that goes with it: q, k, v, o for
    attention, a head taking an equal share of its KV group's k and v; gate, up, down for a
    channel) or output (pap's output group only: linear_proj columns, linear_fc2 column)."""


@dataclass
class DistillConfig:
    """Knowledge distillation from a frozen teacher while pruning and training (docs/DISTILL.md)."""

    enabled: bool = False
    """Train on alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * next-token loss."""
    teacher: Optional[str] = None
    """The teacher's pap checkpoint (root or one iter_* directory); default
    `checkpoint.init_from`, the model pruning starts from."""
    alpha: float = 0.5
    """Weight of the KL term, in [0, 1] (0: the next-token loss alone, the teacher still
    runs and its KL is logged)."""
    temperature: float = 1.0
    """T: both distributions are softmax(logits / T); the KL is scaled by T^2 so that its
    gradients keep their size as T changes."""
    top_k: int = 0
    """0: the teacher's whole distribution. k > 0: the teacher's k most likely tokens,
    renormalised over them, against the student's log-probabilities over the whole vocabulary."""
    during: str = "both"
    """When the teacher teaches: pruning (until the pruning target is reached), after (the
    continued stage only) or both. A run without `prune.enabled` is all 'after'."""


@dataclass
class EvalConfig:
    """Benchmarks during training: lm-evaluation-harness on the current weights (rank 0)."""

    harness_tasks: list = field(default_factory=list)
    """lm-eval tasks to run every `harness_interval` steps (empty: off), e.g. [arc_easy, piqa];
    `task:metric` picks the metric logged. Each run saves a checkpoint (unless one was just
    saved), exports it and logs `eval/<task>` to TensorBoard and the metrics file."""
    harness_interval: int = 0
    """Steps between harness runs; must be positive when `harness_tasks` is set."""
    harness_tokenizer: Optional[str] = None
    """Tokenizer directory or file the exports get (required with `harness_tasks`)."""
    harness_include_path: Optional[str] = None
    """Folder of local lm-eval task YAMLs."""
    harness_limit: Optional[int] = None
    """First N examples of each task (unset: all)."""
    harness_batch_size: int = 8
    """lm-eval batch size."""


@dataclass
class PapConfig:
    """A whole run."""

    model: ModelConfig = field(default_factory=ModelConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)
    log: LogConfig = field(default_factory=LogConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    prune: PruneConfig = field(default_factory=PruneConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict:
        """Plain nested dict, the inverse of `config_from_dict`."""
        return dataclasses.asdict(self)

    @property
    def model_parallel_size(self) -> int:
        return self.parallel.tp * self.parallel.pp


def load_config(path: Optional[str] = None, overrides: typing.Sequence[str] = ()) -> PapConfig:
    """Read a YAML file (or the defaults when `path` is None) and apply `key.sub=value` overrides.

    A file may start from another: `base: other.yaml` (relative to the file) takes that
    file's settings, and this file's sections override them key by key."""
    raw: dict = {}
    source = "<defaults>"
    if path is not None:
        source = str(path)
        raw = _read_yaml(Path(path), ())
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r}: expected key.sub=value, e.g. parallel.tp=2")
        _set_dotted(raw, key.strip(), yaml.safe_load(value) if value.strip() else None)
    cfg = config_from_dict(raw, source)
    validate(cfg, source)
    return cfg


def _read_yaml(path: Path, chain: tuple) -> dict:
    """The config mapping in `path`, with its `base:` files merged under it."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file ({exc.strerror})") from None
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections (model, train, ...)")
    base = raw.pop("base", None)
    if base is None:
        return raw
    if not isinstance(base, str):
        raise ConfigError(f"{path}: base must be the path of another config file, got {base!r}")
    base_path = (path.parent / base).resolve()
    if base_path in chain or base_path == path.resolve():
        raise ConfigError(f"{path}: base {base} leads back to itself")
    return _merged(_read_yaml(base_path, chain + (path.resolve(),)), raw)


def _merged(base: dict, top: dict) -> dict:
    """`top` over `base`, mapping by mapping."""
    out = dict(base)
    for key, value in top.items():
        out[key] = _merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def config_from_dict(raw: dict, source: str = "<dict>") -> PapConfig:
    """Build a PapConfig from nested dicts, type-checking every value."""
    return _build(PapConfig, raw, prefix="", source=source)


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {dotted}: {part} is not a section")
    node[parts[-1]] = value


def _build(cls, raw: Any, prefix: str, source: str):
    where = prefix.rstrip(".") or "top level"
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: {where} must be a mapping, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        key = prefix + str(unknown[0])
        raise ConfigError(f"{source}: unknown config key '{key}' (valid keys in {where}: {', '.join(sorted(names))})")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in raw:
            continue
        key = prefix + f.name
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint):
            kwargs[f.name] = _build(hint, raw[f.name], key + ".", source)
        else:
            kwargs[f.name] = _coerce(raw[f.name], hint, key, source)
    return cls(**kwargs)


def _coerce(value: Any, hint: Any, key: str, source: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is typing.Union:
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(value, inner, key, source)
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
    elif hint is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    elif hint is list or origin is list:
        if isinstance(value, list):
            return value
        if isinstance(value, str):
            return value.split()
    else:  # pragma: no cover - a field type this loader does not know is a programming error
        raise TypeError(f"config field {key} has unsupported type {hint}")
    expected = getattr(hint, "__name__", str(hint))
    raise ConfigError(f"{source}: {key} must be {expected}, got {value!r}")


_CHOICES = {
    "model.params_dtype": ("fp32", "bf16"),
    "model.transformer_impl": ("auto", "local", "te", "transformer_engine"),
    "model.recompute": ("none", "selective", "full"),
    "train.lr_decay_style": ("cosine", "linear", "constant"),
    "prune.metric": ("first", "mix", "obd"),
    "prune.update": ("none", "obs"),
    "prune.adapt_rule": ("published", "scaled"),
    "prune.adapt_unit": ("group", "head"),
    "prune.adapt_score": ("coupled", "output"),
    "prune.layers": ("uniform", "greedy", "adaptive"),
    "distill.during": ("pruning", "after", "both"),
}


def validate(cfg: PapConfig, source: str = "<config>") -> None:
    """Check values and their relations that do not depend on the world size."""
    m, p, t = cfg.model, cfg.parallel, cfg.train

    def fail(key: str, problem: str) -> None:
        raise ConfigError(f"{source}: {key} {problem}")

    for key, allowed in _CHOICES.items():
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if value not in allowed:
            fail(key, f"must be one of {', '.join(allowed)}, got {value!r}")
    positive = {
        "model.vocab_size": m.vocab_size, "model.hidden_size": m.hidden_size,
        "model.num_layers": m.num_layers, "model.num_attention_heads": m.num_attention_heads,
        "model.num_query_groups": m.num_query_groups, "model.ffn_hidden_size": m.ffn_hidden_size,
        "model.make_vocab_size_divisible_by": m.make_vocab_size_divisible_by,
        "parallel.tp": p.tp, "parallel.pp": p.pp, "train.iters": t.iters,
        "train.micro_batch_size": t.micro_batch_size, "train.global_batch_size": t.global_batch_size,
        "data.seq_length": cfg.data.seq_length, "log.interval": cfg.log.interval,
    }
    for key, value in positive.items():
        if value <= 0:
            fail(key, f"must be positive, got {value}")
    if m.head_dim is None and m.hidden_size % m.num_attention_heads:
        fail("model.hidden_size", f"({m.hidden_size}) is not divisible by model.num_attention_heads "
             f"({m.num_attention_heads}); set model.head_dim explicitly")
    if m.num_attention_heads % m.num_query_groups:
        fail("model.num_query_groups", f"({m.num_query_groups}) must divide model.num_attention_heads "
             f"({m.num_attention_heads})")
    for key, value in (("model.num_attention_heads", m.num_attention_heads),
                       ("model.num_query_groups", m.num_query_groups),
                       ("model.ffn_hidden_size", m.ffn_hidden_size)):
        if value % p.tp:
            fail("parallel.tp", f"({p.tp}) does not divide {key} ({value}); choose a tp that divides it")
    if (m.make_vocab_size_divisible_by % p.tp):
        fail("parallel.tp", f"({p.tp}) does not divide model.make_vocab_size_divisible_by "
             f"({m.make_vocab_size_divisible_by})")
    if m.num_layers % p.pp:
        fail("parallel.pp", f"({p.pp}) does not divide model.num_layers ({m.num_layers})")
    if p.sequence_parallel and p.tp == 1:
        fail("parallel.sequence_parallel", "needs parallel.tp > 1")
    if p.overlap_param_gather and not (p.distributed_optimizer and p.overlap_grad_reduce):
        fail("parallel.overlap_param_gather", "needs parallel.distributed_optimizer and "
             "parallel.overlap_grad_reduce (megatron gathers params only with the sharded optimizer)")
    if p.bucket_size is not None and p.bucket_size < 1:
        fail("parallel.bucket_size", f"must be a positive number of parameters or unset, got {p.bucket_size}")
    if cfg.data.num_workers < 0 or cfg.data.prefetch_factor < 1:
        fail("data.num_workers", f"must be >= 0 (got {cfg.data.num_workers}), with data.prefetch_factor >= 1 "
             f"(got {cfg.data.prefetch_factor})")
    if cfg.model.recompute_num_layers < 1:
        fail("model.recompute_num_layers", f"must be >= 1, got {cfg.model.recompute_num_layers}")
    if t.global_batch_size % t.micro_batch_size:
        fail("train.global_batch_size", f"({t.global_batch_size}) must be a multiple of "
             f"train.micro_batch_size ({t.micro_batch_size})")
    if t.min_lr > t.lr or t.lr < 0:
        fail("train.min_lr", f"({t.min_lr}) must be between 0 and train.lr ({t.lr})")
    decay_iters = t.lr_decay_iters or t.iters
    if t.warmup_iters >= decay_iters:
        fail("train.warmup_iters", f"({t.warmup_iters}) must be smaller than the decay length "
             f"(train.lr_decay_iters or train.iters = {decay_iters}); e.g. train.warmup_iters={decay_iters // 10}")
    if t.warmup_iters < 0 or t.eval_iters < 0 or t.eval_interval < 0:
        fail("train", "warmup_iters, eval_iters and eval_interval must be >= 0")
    if cfg.checkpoint.save_interval < 0:
        fail("checkpoint.save_interval", "must be >= 0")
    if t.exit_signal is not None and not hasattr(signal, t.exit_signal):
        fail("train.exit_signal", f"must be a signal name such as SIGUSR1 or null, got {t.exit_signal!r}")
    from pap.resume_settings import check_allow_changes  # it imports this module: a cycle

    check_allow_changes(cfg.checkpoint.allow_changes, source)
    pr = cfg.prune
    if pr.enabled:
        _check_prune_target(pr, fail)
        for key, floor, model_key, width in prune_floors(pr, m):
            if floor < 1:
                fail(key, f"must be >= 1, got {floor}")
            # (with checkpoint.init_from the source's widths are checked when it is read)
            if floor > width and not cfg.checkpoint.init_from:
                fail(key, f"({floor}) is larger than the model's {model_key} ({width}): a floor above the "
                     f"model's width cannot be kept; choose at most {width}")
        if pr.grad_steps < 1 or pr.prune_steps < 1:
            fail("prune", "grad_steps and prune_steps must be >= 1")
        if pr.final_multiple_of < 1:
            fail("prune.final_multiple_of", f"must be >= 1 (1: off), got {pr.final_multiple_of}")
        if pr.update == "obs" and (pr.hessian_tokens < 1 or pr.hessian_damp < 0):
            fail("prune.hessian_tokens", f"must be >= 1 and prune.hessian_damp >= 0 with prune.update=obs, got "
                 f"{pr.hessian_tokens} and {pr.hessian_damp}")
        if pr.update == "obs" and p.sequence_parallel:
            fail("prune.update", "obs does not support parallel.sequence_parallel yet (the Hessians sample "
                 "whole sequences); set parallel.sequence_parallel=false")
        if pr.layers == "adaptive" and pr.metric != "first":
            fail("prune.layers", f"adaptive ranks heads and channels inside a layer by first-order Taylor "
                 f"importance; set prune.metric=first (got {pr.metric!r})")
        amplitude_cap = 1 if pr.adapt_rule == "scaled" else float("inf")
        if pr.layers == "adaptive" and not (0 < pr.increment < 1 and 0 <= pr.adapt_amplitude < amplitude_cap):
            fail("prune.increment", f"must be in (0, 1) and prune.adapt_amplitude >= 0 (and < 1 with "
                 f"prune.adapt_rule=scaled) with prune.layers=adaptive, got {pr.increment} and "
                 f"{pr.adapt_amplitude}; e.g. 0.02 and 0.02")
        if pr.normalize not in (None, "params"):
            fail("prune.normalize", f"must be unset or 'params', got {pr.normalize!r}")
        if pr.min_kv_heads < p.tp or pr.min_ffn < p.tp:
            fail("prune.min_kv_heads", f"and prune.min_ffn must be at least parallel.tp ({p.tp}) so every "
                 f"tensor-parallel rank keeps a KV head and an FFN channel; e.g. prune.min_kv_heads={p.tp} "
                 f"prune.min_ffn={p.tp}")
    _check_distill(cfg, fail)
    ev = cfg.eval
    if ev.harness_tasks:
        if ev.harness_interval < 1:
            fail("eval.harness_interval", f"must be a positive number of steps with eval.harness_tasks, "
                 f"got {ev.harness_interval}")
        if not ev.harness_tokenizer or not cfg.checkpoint.dir:
            fail("eval.harness_tasks", "needs eval.harness_tokenizer (the exports' tokenizer) and checkpoint.dir "
                 "(the harness evaluates an export of a saved checkpoint)")
        if ev.harness_batch_size < 1 or (ev.harness_limit is not None and ev.harness_limit < 1):
            fail("eval.harness_batch_size", "and eval.harness_limit must be positive")
    if not cfg.data.blend:
        fail("data.blend", "is empty: give at least one dataset prefix (path/name_text_document)")
    _parse_split(cfg.data.split, source)


def _check_distill(cfg: PapConfig, fail) -> None:
    """`distill.*`: a teacher to load and a loss that is a weighted sum."""
    d = cfg.distill
    if not d.enabled:
        return
    if not (d.teacher or cfg.checkpoint.init_from):
        fail("distill.teacher", "is unset and so is checkpoint.init_from: name the teacher's pap checkpoint, "
             "e.g. distill.teacher=ckpt/smollm-1.7b")
    if not 0 <= d.alpha <= 1:
        fail("distill.alpha", f"must be in [0, 1], got {d.alpha}")
    if not d.temperature > 0:
        fail("distill.temperature", f"must be positive, got {d.temperature}")
    if d.top_k < 0:
        fail("distill.top_k", f"must be 0 (the whole distribution) or a positive number of tokens, got {d.top_k}")
    if d.during == "pruning" and not cfg.prune.enabled:
        fail("distill.during", "is 'pruning' but prune.enabled is false: the teacher would never teach; "
             "set distill.during=after (or both), or enable pruning")


def prune_floors(pr, m) -> list:
    """(floor key, floor, model key, the model's width) for each `prune.min_*` floor."""
    return [("prune.min_heads", pr.min_heads, "model.num_attention_heads", m.num_attention_heads),
            ("prune.min_kv_heads", pr.min_kv_heads, "model.num_query_groups", m.num_query_groups),
            ("prune.min_ffn", pr.min_ffn, "model.ffn_hidden_size", m.ffn_hidden_size),
            ("prune.min_hidden", pr.min_hidden, "model.hidden_size", m.hidden_size)]


MIN_TARGET_COUNT = 1000
"""The smallest `prune.target_params` read as a parameter count: a count below it is no
language model, so a value such as 2.0 is a mistake (a fraction meant as 0.2, or a count
missing its digits)."""


def _check_prune_target(pr, fail) -> None:
    """`prune.target_params` is a fraction in (0, 1] or a whole count of at least
    MIN_TARGET_COUNT parameters; anything else is refused with what was probably meant."""
    target = pr.target_params
    if target <= 0:
        fail("prune.target_params", "must be positive (a count, or a fraction <= 1)")
    if target > 1 and (target != int(target) or target < MIN_TARGET_COUNT):
        fail("prune.target_params", f"is {target:g}: values above 1 are parameter counts (whole numbers of at "
             f"least {MIN_TARGET_COUNT}, e.g. 134e6), values up to 1 fractions of the starting model "
             f"(e.g. 0.5); {target:g} is neither")


def _parse_split(split: str, source: str) -> list:
    try:
        parts = [float(x) for x in split.replace("/", ",").split(",")]
    except ValueError:
        parts = []
    if len(parts) != 3 or min(parts) < 0 or sum(parts) <= 0:
        raise ConfigError(f"{source}: data.split must be three non-negative parts like '98,2,0', got {split!r}")
    return parts


def parse_blend(blend: list, source: str = "<config>") -> tuple:
    """Megatron blend list -> (prefixes, weights or None)."""
    if len(blend) == 1 or all(isinstance(x, str) and not _is_number(x) for x in blend):
        return [str(x) for x in blend], None
    if len(blend) % 2 or not all(_is_number(w) for w in blend[0::2]):
        raise ConfigError(f"{source}: data.blend must be [prefix, ...] or [weight, prefix, weight, prefix, ...]")
    weights = [float(w) for w in blend[0::2]]
    for weight, prefix in zip(weights, blend[1::2]):
        # (megatron's blended dataset asserts every weight > 0)
        if not weight > 0:
            raise ConfigError(f"{source}: data.blend weight {weight:g} for {prefix} must be positive; "
                              f"leave the dataset out of data.blend to skip it")
    return [str(x) for x in blend[1::2]], weights


def _is_number(x: Any) -> bool:
    if isinstance(x, bool):
        return False
    if isinstance(x, (int, float)):
        return True
    try:
        float(x)
        return True
    except (TypeError, ValueError):
        return False
