"""`pap.baselines`: one-shot pruning against a plain re-computation, and fresh weights of an Arch.

One spawned process (megatron needs a process group): a tiny source model is trained for
a few steps, pruned in one shot to 35% of its parameters, and its shape rebuilt with
fresh weights. The one-shot choice is checked against saliency computed here with plain
autograd and docs/METHOD.md's `mix` formula, fed to `choose` one group at a time.
"""

import json
from dataclasses import replace
from pathlib import Path

import torch

from tests.helpers import run_distributed, tiny_config

TARGET, CALIB_BATCHES = 0.35, 2
TINY_YAML = str(Path(__file__).resolve().parents[2] / "configs/tiny.yaml")


def _reference_scores(cfg, source, calib_batches):
    """Mean `mix` group scores of `source` over the first `calib_batches` global batches.

    Written out independently of pap.pruning.accumulator: plain autograd through the bare
    megatron model (no DDP), element saliency |w*g - w^2*F/2| with F the running mean of
    g^2 up to each batch, summed per head / FFN channel / hidden channel, averaged over batches.
    """
    from pap import checkpoint
    from pap.data import Batches, build_datasets
    from pap.model import build_model
    from pap.pruning.select import GroupScores

    state = checkpoint.read(source)
    arch = state.arch
    model = build_model(arch, cfg)
    checkpoint.load_model(state, model)
    t = cfg.train
    train_ds, _ = build_datasets(cfg, t.iters * t.global_batch_size, t.eval_iters * t.global_batch_size, None)
    batches = Batches(train_ds, t.micro_batch_size, t.global_batch_size, 0, 1)
    layers = model.decoder.layers
    outputs = [(layer.self_attention.linear_proj.weight, layer.mlp.linear_fc2.weight) for layer in layers]
    fisher_sums = [[torch.zeros_like(w) for w in pair] for pair in outputs]
    attn = [0.0] * len(layers)
    ffn = [0.0] * len(layers)
    stem = 0.0
    for step in range(1, calib_batches + 1):
        model.zero_grad()
        micro = batches.microbatches((step - 1) * t.global_batch_size)
        for mb in micro:
            per_token = model(mb["tokens"], mb["position_ids"], None, labels=mb["labels"])
            mask = mb["loss_mask"].float()
            ((per_token * mask).sum() / mask.sum() / len(micro)).backward()
        for l, pair in enumerate(outputs):
            scores = []
            for k, w in enumerate(pair):
                fisher_sums[l][k] += w.grad.square()
                fisher = fisher_sums[l][k] / step
                scores.append((w.detach() * w.grad - 0.5 * w.detach().square() * fisher).abs().double())
            proj, fc2 = scores
            attn[l] = attn[l] + proj.reshape(proj.shape[0], -1, arch.head_dim).sum(dim=(0, 2))
            ffn[l] = ffn[l] + fc2.sum(dim=0)
            stem = stem + proj.sum(dim=1) + fc2.sum(dim=1)
    n = calib_batches
    return arch, GroupScores(attn=[a / n for a in attn], ffn=[f / n for f in ffn], stem=stem / n)


def oneshot_and_scratch(cfg_dict: dict, tmp: str) -> dict:
    """Runs in a spawned process; returns what the test compares."""
    from pap import baselines, checkpoint
    from pap.config import config_from_dict
    from pap.distributed import init_distributed, shutdown
    from pap.init import full_init
    from pap.model import build_model
    from pap.pruning.round_plan import scores_after
    from pap.pruning.remove import prune_state
    from pap.pruning.select import Floors, Removal, choose, remove_from_arch
    from pap.sharding.full_state import gather_full_state
    from pap.trainer import Trainer

    cfg = config_from_dict(cfg_dict)
    source = f"{tmp}/source"
    Trainer(replace(cfg, checkpoint=replace(cfg.checkpoint, dir=source))).run()
    shutdown()
    result = baselines.oneshot(cfg, source, TARGET, CALIB_BATCHES, f"{tmp}/oneshot")
    baselines.scratch(cfg, f"{tmp}/oneshot", f"{tmp}/scratch")

    init_distributed(1, 1, cfg.train.seed)
    arch, scores = _reference_scores(cfg, source, CALIB_BATCHES)
    source_params = arch.num_params()
    reference = []
    while arch.num_params() > int(TARGET * source_params):
        removal = choose(scores, arch, None, Floors())
        reference.append((removal.kind, removal.indices))
        arch = remove_from_arch(arch, removal)
        scores = scores_after(scores, removal)

    def loaded(path, arch_of):
        model = build_model(arch_of, cfg)
        checkpoint.load_model(checkpoint.read(path), model)
        return model

    # The source's weights cut by the logged removals, against the saved one-shot weights.
    state = checkpoint.read(source)
    expected, shape = gather_full_state(loaded(source, state.arch), "param"), state.arch
    events = [json.loads(line) for line in open(f"{tmp}/oneshot/pruning_events.jsonl")]
    for event in events:
        removal = Removal(event["kind"], tuple(event["indices"]), event["score"], ())
        expected = prune_state(expected, shape, removal)
        shape = remove_from_arch(shape, removal)
    pruned_arch = checkpoint.read(f"{tmp}/oneshot").arch
    pruned = loaded(f"{tmp}/oneshot", pruned_arch)
    saved = gather_full_state(pruned, "param")
    scratch_state = checkpoint.read(f"{tmp}/scratch")
    scratch_weights = gather_full_state(loaded(f"{tmp}/scratch", scratch_state.arch), "param")
    fresh = {name: full_init(name, t.shape, cfg.train.seed, cfg.model.init_std, scratch_state.arch.num_layers)
             for name, t in scratch_weights.items()}
    return {
        "source_params": source_params, "target": int(TARGET * source_params), "oneshot_arch": pruned_arch,
        "result": {k: result[k] for k in ("params", "loss_before", "loss_after")},
        "oneshot_choices": [(r.kind, r.indices) for r in result["removals"]], "reference": reference,
        "reference_arch": arch, "logged": [(e["kind"], tuple(e["indices"])) for e in events], "logged_arch": shape,
        "weights_match": sorted(expected) == sorted(saved) and all(torch.equal(expected[n], saved[n]) for n in saved),
        "scratch_arch": scratch_state.arch, "scratch_model_only": scratch_state.model_only,
        "scratch_is_fresh": all(torch.equal(fresh[n], scratch_weights[n]) for n in fresh),
    }


def test_oneshot_matches_reference_and_scratch_is_fresh_init(tmp_path, random_dataset):
    cfg = tiny_config(random_dataset, train={"iters": 3, "eval_iters": 1})
    out = run_distributed(oneshot_and_scratch, 1, cfg, str(tmp_path))[0]
    kinds = {kind for kind, _ in out["reference"]}

    assert out["result"]["params"] <= out["target"] < out["source_params"]
    assert len(out["reference"]) > 5 and len(kinds) >= 2  # a real sequence of choices, more than one kind
    assert out["oneshot_choices"] == out["reference"] == out["logged"]
    assert out["oneshot_arch"] == out["reference_arch"] == out["logged_arch"]
    assert out["weights_match"]  # physical removal of exactly those groups, nothing else touched
    before, after = out["result"]["loss_before"], out["result"]["loss_after"]
    assert torch.isfinite(torch.tensor([before, after])).all() and after > before

    assert out["scratch_arch"] == out["oneshot_arch"] and out["scratch_model_only"]
    assert out["scratch_is_fresh"]


def test_bad_input_is_one_line(tmp_path, capsys):
    from pap.baselines import main

    assert main(["oneshot", "--config", TINY_YAML, "--source", str(tmp_path), "--target", "0.5",
                 "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "no complete pap checkpoint" in err and "\n" not in err
    for bad in (["--target", "0"], ["--target", "0.5", "--calib-batches", "0"]):
        assert main(["oneshot", "--config", TINY_YAML, "--source", str(tmp_path), *bad,
                     "--out", str(tmp_path / "o")]) == 2
        assert capsys.readouterr().err.startswith("error: --")

