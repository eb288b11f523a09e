"""`pap.eval loss`: the same loss on the same samples at TP=1, TP=2 and PP=2, equal to what
`transformers` computes on the model's export; data the model cannot embed is refused."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers import free_port, write_random_dataset

pytest.importorskip("transformers")
REPO = Path(__file__).resolve().parents[2]
SEQ, TOKENS = 32, 500  # 16 samples (tokens round up to whole samples): 4 micro batches of 4
LAST_LINE = re.compile(r"^loss (\d+\.\d+) ppl (\d+\.\d+)$")


def eval_loss(ckpt, data, tp=1, pp=1, expect_ok=True) -> subprocess.CompletedProcess:
    launcher = [sys.executable] if tp * pp == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(tp * pp), "--master-port",
        str(free_port())]
    result = subprocess.run([*launcher, "-m", "pap.eval", "loss", "--ckpt", str(ckpt), "--data", str(data),
                             "--tokens", str(TOKENS), "--seq-length", str(SEQ), "--tp", str(tp), "--pp", str(pp)],
                            cwd=REPO, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"})
    if expect_ok:
        assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def pruned_checkpoint(tmp_path_factory):
    """A pap checkpoint of a pruned model (cluster attention, per-layer shapes) that TP=2
    can hold (every layer keeps two KV heads), with its full tensors."""
    from tests.eval.workers import checkpoint_from_full_state
    from tests.helpers import run_distributed
    from tests.hf.test_remote_code import pruned_arch, random_full_state

    arch = pruned_arch()
    arch.heads_per_group[3] = [1, 3]
    full = random_full_state(arch, seed=11)
    out = tmp_path_factory.mktemp("loss") / "ckpt"
    run_distributed(checkpoint_from_full_state, 1, arch.to_json(), full, str(out))
    return out


@pytest.mark.slow
def test_same_loss_at_every_layout_and_in_transformers(pruned_checkpoint, random_dataset, tmp_path):
    from transformers import AutoModelForCausalLM

    from pap.eval.loss import DEFAULT_SPLIT, build_samples

    losses = {}
    for tp, pp in ((1, 1), (2, 1), (1, 2)):
        out = eval_loss(pruned_checkpoint, random_dataset, tp, pp).stdout.strip().splitlines()
        match = LAST_LINE.match(out[-1])
        assert match, out[-3:]
        losses[(tp, pp)] = float(match.group(1))
        assert float(match.group(2)) == pytest.approx(torch.tensor(losses[(tp, pp)]).exp().item(), rel=1e-5)

    # The reference: transformers on the export, the same samples, cross-entropy over the vocabulary.
    export = tmp_path / "hf"
    subprocess.run([sys.executable, "-m", "pap.convert", "mcore-to-hf", "--ckpt", str(pruned_checkpoint),
                    "--out", str(export)], cwd=REPO, check=True, capture_output=True, timeout=300)
    model = AutoModelForCausalLM.from_pretrained(export, trust_remote_code=True, dtype=torch.float32)
    samples = build_samples([random_dataset], None, -(-TOKENS // SEQ), SEQ, 300, DEFAULT_SPLIT, 1234)
    total, count = 0.0, 0
    with torch.no_grad():
        for sample in samples:
            logits = model(sample["tokens"][None], position_ids=sample["position_ids"][None]).logits[0]
            per_token = torch.nn.functional.cross_entropy(logits, sample["labels"], reduction="none")
            total += float((per_token * sample["loss_mask"]).double().sum())
            count += int(sample["loss_mask"].sum())
    assert count == len(samples) * SEQ
    expected = total / count
    for layout, loss in losses.items():
        assert loss == pytest.approx(expected, abs=1e-5), (layout, losses, expected)


@pytest.mark.slow
def test_data_with_a_larger_vocabulary_is_one_error_line(pruned_checkpoint, tmp_path):
    prefix = write_random_dataset(str(tmp_path / "wide_text_document"), num_docs=20, vocab=1000)
    result = eval_loss(pruned_checkpoint, prefix, expect_ok=False)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = [l for l in (result.stdout + result.stderr).splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"error: --data {prefix}: contains token id 99"), lines
    assert "has vocab_size 300" in lines[0]
