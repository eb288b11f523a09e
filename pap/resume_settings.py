"""What a resumed run may change from the run its checkpoint belongs to.

A checkpoint records the config it was written with. When a run resumes with a config
that differs, every difference is either

* **applied**: the new value takes effect from the resumed step and one line says so,
  `changed on resume: train.lr 0.003 -> 0.001`; or
* **refused**: the run stops with one line naming the setting, because the resumed run
  would silently become another run (other samples, another sequence length, another
  pruning target or window), unless `checkpoint.allow_changes` lists the setting, which
  applies it and says so; or
* **kept**: the model's shape comes from the checkpoint and cannot change
  (`pap.trainer.check_resume_matches_config` refuses those with the saved value).

`POLICY` is the table (docs/RELIABILITY.md shows it); a setting it does not name is applied
and logged. Like Megatron-LM's `--override-opt_param-scheduler`, a changed learning-rate
setting replaces the checkpoint's value in the scheduler (the step count is kept).
"""

from __future__ import annotations

import json
from typing import Dict, List, Tuple

from pap.errors import PapError

APPLY, REFUSE, KEEP = "applied", "refused unless allowed", "kept from the checkpoint"

# Why each refused setting would make the resumed run another run.
_REFUSED = {
    "data.blend": "the datasets and their weights decide which samples every step reads",
    "data.split": "the split decides which documents are training samples",
    "data.seq_length": "the samples are cut at the sequence length: every later step would read other tokens",
    "train.seed": "the seed decides the order of the samples",
    "train.global_batch_size": "the samples of each step and the schedule's step count follow the batch size",
    "checkpoint.init_from": "the source model sets what the pruning target is a fraction of",
}
_REFUSED_SECTIONS = {
    "prune": "pruning settings decide the removals still to come and the saliency window in progress",
    "distill": "the teacher and the distillation loss decide the gradients of every step still to come",
}
# Model settings the checkpoint's weights fix (checked with their saved values by the trainer).
_KEPT = ("model.vocab_size", "model.make_vocab_size_divisible_by", "model.hidden_size", "model.num_layers",
         "model.num_attention_heads", "model.num_query_groups", "model.head_dim", "model.ffn_hidden_size",
         "model.tie_embeddings", "model.rope_theta", "model.norm_eps")
# Settings that never take part (the override itself, where the run is).
_IGNORED = ("checkpoint.allow_changes", "checkpoint.rollback", "checkpoint.dir")

# Config key -> attribute of megatron-core's OptimizerParamScheduler it sets.
_SCHEDULE = {"train.lr": ("max_lr",), "train.min_lr": ("min_lr",), "train.warmup_iters": ("lr_warmup_steps",),
             "train.lr_decay_style": ("lr_decay_style",), "train.lr_decay_iters": ("lr_decay_steps",),
             "train.weight_decay": ("start_wd", "end_wd")}


def policy(key: str) -> str:
    """APPLY, REFUSE or KEEP for dotted config `key`."""
    if key in _KEPT:
        return KEEP
    if key in _REFUSED or key.split(".")[0] in _REFUSED_SECTIONS:
        return REFUSE
    return APPLY


def reason(key: str) -> str:
    """Why `key` is refused (empty for the others)."""
    return _REFUSED.get(key) or _REFUSED_SECTIONS.get(key.split(".")[0], "")


def flatten(tree: dict, prefix: str = "") -> Dict[str, object]:
    """{dotted key: value} of a nested config dict, values as JSON reads them back."""
    out = {}
    for name, value in tree.items():
        key = prefix + name
        if isinstance(value, dict):
            out.update(flatten(value, key + "."))
        else:
            out[key] = json.loads(json.dumps(value, default=str))
    return out


def changes(saved: dict, current: dict) -> List[Tuple[str, object, object]]:
    """(key, saved value, current value) for every setting that differs, in key order.

    Keys the checkpoint does not record (written by an older version) are not compared."""
    old, new = flatten(saved), flatten(current)
    return [(key, old[key], new[key]) for key in sorted(new)
            if key in old and old[key] != new[key] and key not in _IGNORED]


def check_allow_changes(allowed: list, source: str = "<config>") -> None:
    """Every name in `checkpoint.allow_changes` must be a refused-unless-allowed setting."""
    from pap.config import ConfigError, PapConfig  # pap.config imports this module: a cycle

    known = flatten(PapConfig().to_dict())
    for key in allowed:
        if key not in known:
            raise ConfigError(f"{source}: checkpoint.allow_changes names {key!r}, which is not a config key")
        if policy(key) != REFUSE:
            raise ConfigError(f"{source}: checkpoint.allow_changes names {key!r}, which a resume "
                              f"{'applies without it' if policy(key) == APPLY else 'cannot change'}; remove it")


def review(saved: dict, current: dict, allowed: list, where: str) -> List[str]:
    """The lines a resume prints for the settings that changed since checkpoint `where`;
    PapError for the first refused one that `allowed` does not list."""
    lines = []
    for key, old, new in changes(saved, current):
        kind = policy(key)
        if kind == KEEP:
            continue  # the trainer refuses these with the model's saved value
        if kind == REFUSE and key not in allowed:
            raise PapError(f"{key} changed since {where} ({_show(old)} -> {_show(new)}) and a resume cannot take "
                           f"that change: {reason(key)}; set {key}={_show(old)} to resume as the run was, start a "
                           f"new run in another checkpoint.dir, or add {key} to checkpoint.allow_changes to "
                           f"change it anyway")
        note = " (allowed by checkpoint.allow_changes)" if kind == REFUSE else ""
        if key == "train.iters" and flatten(current).get("train.lr_decay_iters") is None:
            decay = flatten(saved).get("train.lr_decay_iters") or old
            note = (f" (the learning rate keeps decaying over the checkpoint's {decay} steps; set "
                    f"train.lr_decay_iters to change that)") if decay != new else ""
        lines.append(f"changed on resume: {key} {_show(old)} -> {_show(new)}{note}")
    return lines


def apply_schedule(scheduler, saved: dict, current: dict, iters: int) -> None:
    """Put changed learning-rate settings into `scheduler`, already loaded from the checkpoint
    (which keeps its own values otherwise): the new values hold from the resumed step on."""
    changed = False
    for key, _, new in changes(saved, current):
        for attribute in _SCHEDULE.get(key, ()):
            value = iters if key == "train.lr_decay_iters" and new is None else new
            setattr(scheduler, attribute, float(value) if attribute.endswith(("lr", "wd")) else value)
            changed = True
    if changed:
        scheduler.step(increment=0)  # the current lr and weight decay into the optimizer's groups


def _show(value: object) -> str:
    return "null" if value is None else json.dumps(value) if isinstance(value, (list, dict)) else str(value)


def table_rows() -> List[Tuple[str, str, str]]:
    """(key, policy, reason) for every config key: the table docs/RELIABILITY.md shows."""
    from pap.config import PapConfig  # pap.config imports this module: a cycle

    return [(key, policy(key), reason(key)) for key in flatten(PapConfig().to_dict()) if key not in _IGNORED]

