"""A pruning round as a pure plan: which groups go, in order, and the `Arch` after each.

`plan_round(scores, arch, settings, target)` is the one place a round's removals are
chosen, for every `prune.layers` mode and for the one-shot baseline. It is a pure function
of the fully reduced scores (identical on every rank), the current `Arch` and the
settings, so every rank plans the same round, and the `Arch` chain it returns is the only
time the round's shapes are worked out: the executor (`pap.sharding.reshard`), the OBS
update and the event log all read it.

Selection modes are objects behind one interface (`SelectionMode`): a new mode is a new
class here and an entry in `SELECTION_MODES`, not a branch in the pruning component.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from pap.arch import Arch
from pap.config import PruneConfig
from pap.pruning.adaptive import increment_steps, wanted
from pap.pruning.select import (UNTOUCHED, Floors, GroupScores, Removal, aligning_kind, choose, choose_greedy,
                                remove_from_arch)

Step = Tuple[Removal, Arch]
"""One removal and the `Arch` right after it."""


@dataclass(frozen=True)
class RoundPlan:
    """A round's removals in order, each with the shape right after it."""

    start: Arch
    steps: List[Step] = field(default_factory=list)
    notes: List[dict] = field(default_factory=list)
    """Extra event-log fields per step (an adaptive increment's plan rides on its first)."""

    @classmethod
    def of(cls, start: Arch, removals: Sequence[Removal]) -> "RoundPlan":
        """The plan of given `removals` (applied in order from `start`)."""
        steps, arch = [], start
        for removal in removals:
            arch = remove_from_arch(arch, removal)
            steps.append((removal, arch))
        return cls(start, steps, [{} for _ in steps])

    @property
    def removals(self) -> List[Removal]:
        return [removal for removal, _ in self.steps]

    @property
    def end(self) -> Arch:
        """The shape after the whole round (`start` when the round removes nothing)."""
        return self.steps[-1][1] if self.steps else self.start

    def archs_before(self) -> List[Arch]:
        """The `Arch` right before each removal (the coordinates its indices are in)."""
        return [self.start] + [after for _, after in self.steps[:-1]]

    def __bool__(self) -> bool:
        return bool(self.steps)


def _drop(vector: torch.Tensor, index: int) -> torch.Tensor:
    return torch.cat([vector[:index], vector[index + 1:]])


def scores_after(scores: GroupScores, removal: Removal) -> GroupScores:
    """The remaining groups' scores once `removal` is gone (for several removals per round)."""
    if removal.kind == "attn":
        return replace(scores, attn=[v if i == UNTOUCHED else _drop(v, i) for v, i in zip(scores.attn, removal.indices)])
    if removal.kind == "ffn":
        return replace(scores, ffn=[v if i == UNTOUCHED else _drop(v, i) for v, i in zip(scores.ffn, removal.indices)])
    return replace(scores, stem=_drop(scores.stem, removal.indices[0]))


@dataclass(frozen=True)
class RoundSettings:
    """What a round needs from `prune.*`: the parts of `PruneConfig` that shape a plan."""

    floors: Floors
    prune_steps: int
    normalize: Optional[str]
    final_multiple_of: int = 1
    increment: float = 0.02
    adapt_amplitude: float = 0.02
    adapt_rule: str = "published"
    adapt_unit: str = "group"
    source: Optional[Arch] = None
    """The `Arch` pruning started from (the published adaptive rule's reference widths);
    None: each increment's own starting `Arch`."""

    @classmethod
    def from_config(cls, cfg: PruneConfig, source: Optional[Arch] = None) -> "RoundSettings":
        return cls(Floors(heads=cfg.min_heads, ffn=cfg.min_ffn, hidden=cfg.min_hidden, kv_heads=cfg.min_kv_heads),
                   cfg.prune_steps, cfg.normalize, cfg.final_multiple_of, cfg.increment, cfg.adapt_amplitude,
                   cfg.adapt_rule, cfg.adapt_unit, source)


class SelectionMode:
    """How a round picks its removals (`prune.layers`)."""

    name = ""
    needs_layer_cosine = False
    """True when the round needs the window's per-layer cosines (reduced over every rank)."""

    def select(self, scores: GroupScores, arch: Arch, settings: RoundSettings, target: int,
               layer_cosine: Optional[Sequence[float]]) -> Tuple[List[Step], GroupScores, List[dict]]:
        """(steps, the scores of what is left, event-log notes per step); by default at most
        `settings.prune_steps` removals chosen one at a time, each seeing what is left."""
        return self._one_at_a_time(scores, arch, settings, target)

    def choose_one(self, scores: GroupScores, arch: Arch, settings: RoundSettings, kinds=("attn", "ffn", "stem"),
                   normalize="settings", align: Optional[int] = None) -> Optional[Removal]:
        """The next single removal among `kinds`, or None when each is at its floor."""
        normalize = settings.normalize if normalize == "settings" else normalize
        return self._pick(scores, arch, normalize, settings.floors, kinds, align)

    def _pick(self, scores, arch, normalize, floors, kinds, align) -> Optional[Removal]:
        raise NotImplementedError

    def _one_at_a_time(self, scores, arch, settings, target):
        steps = []
        while len(steps) < settings.prune_steps and arch.num_params() > target:
            removal = self.choose_one(scores, arch, settings)
            if removal is None:
                break
            arch = remove_from_arch(arch, removal)
            steps.append((removal, arch))
            scores = scores_after(scores, removal)
        return steps, scores, [{}] * len(steps)


class UniformSelection(SelectionMode):
    """Eq. 10: the least salient head of every layer, FFN channel of every layer, or hidden channel."""

    name = "uniform"

    def _pick(self, scores, arch, normalize, floors, kinds, align):
        return choose(scores, arch, normalize, floors, kinds=kinds)


class GreedySelection(SelectionMode):
    """The least salient single group of the whole model: one layer's head or channel, or a hidden channel."""

    name = "greedy"

    def _pick(self, scores, arch, normalize, floors, kinds, align):
        return choose_greedy(scores, arch, normalize, floors, kinds=kinds, align=align)


class AdaptiveSelection(GreedySelection):
    """Adapt-Pruner's increments (`pap.pruning.adaptive`): per-layer sparsity from the layers'
    input/output cosines (`settings.adapt_rule`: the published cumulative update relative to
    `settings.source`, or pap's scaled share of the current parameters), then the
    lowest-scored KV groups or heads (`settings.adapt_unit`) and FFN channels inside each
    layer. Alignment removals (`prune.final_multiple_of`) are chosen as in greedy mode."""

    name = "adaptive"
    needs_layer_cosine = True

    def select(self, scores, arch, settings, target, layer_cosine=None):
        if layer_cosine is None:
            raise ValueError("prune.layers adaptive plans from the window's layer cosines")
        args = (layer_cosine, settings.increment, settings.adapt_amplitude, target)
        options = dict(rule=settings.adapt_rule, unit=settings.adapt_unit, source=settings.source)
        plan = wanted(arch, *args, **options)
        plan_note = {"layer_cosine": list(layer_cosine), "layer_sparsity": plan.sparsity}
        steps = increment_steps(scores, arch, *args, floors=settings.floors, **options)
        for removal, _ in steps:
            scores = scores_after(scores, removal)
        notes = [{} for _ in steps]
        if notes:
            notes[0] = plan_note
        return steps, scores, notes


SELECTION_MODES: Dict[str, SelectionMode] = {mode.name: mode for mode in
                                             (UniformSelection(), GreedySelection(), AdaptiveSelection())}
"""`prune.layers` -> its selection mode."""


def _aligning(mode: SelectionMode, scores: GroupScores, arch: Arch, settings: RoundSettings) -> List[Step]:
    """The round that reaches the target also takes the least salient extra FFN and hidden
    channels until those widths are multiples of `prune.final_multiple_of` (the fastest
    GEMM shapes for the continued stage), or a floor stops it."""
    multiple, steps = settings.final_multiple_of, []
    for kind in ("ffn", "stem"):
        while aligning_kind(arch, multiple) == kind:
            removal = mode.choose_one(scores, arch, settings, kinds=(kind,), normalize=None, align=multiple)
            if removal is None:  # at its floor: left unaligned
                break
            arch = remove_from_arch(arch, removal)
            steps.append((removal, arch))
            scores = scores_after(scores, removal)
    return steps


def plan_round(scores: GroupScores, arch: Arch, settings: RoundSettings, target: int,
               mode: SelectionMode = SELECTION_MODES["uniform"],
               layer_cosine: Optional[Sequence[float]] = None, align: bool = True) -> RoundPlan:
    """The round's removals from the fully reduced `scores` of `arch`: at most
    `settings.prune_steps` of them one at a time (uniform, greedy), or one increment
    (adaptive), stopping at `target` parameters; the round that reaches the target also
    aligns the widths (`align`). An empty plan means every dimension is at its floor."""
    steps, scores, notes = mode.select(scores, arch, settings, target, layer_cosine)
    end = steps[-1][1] if steps else arch
    if align and steps and end.num_params() <= target and settings.final_multiple_of > 1:
        extra = _aligning(mode, scores, end, settings)
        steps, notes = steps + extra, notes + [{}] * len(extra)
    return RoundPlan(arch, steps, notes)
