"""Pruned models exported as Nemotron-NAS serve: vLLM (when its environment exists, or made
first with PAP_SERVE_VLLM=1, as `make serve-check` and CI do; PAP_SERVE_VLLM=0 leaves it out) and
`transformers` continue prompts greedily exactly as pap's own model of the checkpoint does.

Four shapes: uniform, per-layer FFN widths (greedy), per-layer heads and uneven KV groups
with per-layer FFN widths (adaptive / cluster attention), and a pruned hidden size
(head_dim x heads != hidden). head_dim is 32, the smallest vLLM's CPU attention runs.
The uniform model is also checked as a plain Llama export.
"""

import json
import os
import subprocess
import sys

import pytest

from pap.serve import vllm_env
from tests.helpers import run_distributed
from tests.hf.test_convert import convert

pytest.importorskip("transformers")
pytestmark = pytest.mark.slow

PROMPTS, TOKENS = 4, 32


def _arch(heads_per_group, ffn, hidden=96):
    from pap.arch import Arch

    return Arch(vocab_size=500, padded_vocab_size=512, hidden_size=hidden, head_dim=32,
                heads_per_group=heads_per_group, ffn=ffn, tie_embeddings=False)


MODELS = {
    "uniform": _arch([[2, 2]] * 3, [160] * 3),
    "greedy": _arch([[2, 2]] * 3, [160, 37, 96]),
    "adaptive": _arch([[3, 1], [2, 0], [1, 1]], [150, 64, 101]),
    "hidden": _arch([[2, 1], [1, 1], [2, 2]], [80, 80, 80], hidden=83),
}


def serve_check(args):
    """`python -m pap.serve_check ARGS` in its own process (it starts a process group); its status."""
    done = subprocess.run([sys.executable, "-m", "pap.serve_check", *args], capture_output=True, text=True,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"}, timeout=1800)
    print(done.stdout[-6000:], done.stderr[-3000:])
    return done.returncode


def _vllm():
    """Whether to check vLLM: PAP_SERVE_VLLM=1 makes its environment if need be, =0 leaves it
    out; unset, vLLM is checked when its environment is ready."""
    wanted = os.environ.get("PAP_SERVE_VLLM")
    if wanted in ("0", "1"):
        return wanted == "1"
    return (vllm_env.venv_dir() / vllm_env.MARKER).is_file()


@pytest.mark.parametrize("name", list(MODELS))
def test_nemotron_nas_export_serves_like_the_checkpoint(name, tmp_path):
    from tests.hf.workers import make_checkpoint

    run_distributed(make_checkpoint, 1, MODELS[name].to_json(), str(tmp_path / "ckpt"))
    convert("mcore-to-hf", "--ckpt", str(tmp_path / "ckpt"), "--out", str(tmp_path / "nas"), "--format", "nemotron_nas")
    config = json.loads((tmp_path / "nas" / "config.json").read_text())
    assert config["architectures"] == ["DeciLMForCausalLM"]
    args = [str(tmp_path / "nas"), "--ckpt", str(tmp_path / "ckpt"), "--prompts", str(PROMPTS), "--tokens", str(TOKENS)]
    assert serve_check(args + ([] if _vllm() else ["--no-vllm"])) == 0
    if name == "uniform":
        convert("mcore-to-hf", "--ckpt", str(tmp_path / "ckpt"), "--out", str(tmp_path / "llama"), "--format", "llama")
        llama = [str(tmp_path / "llama")] + args[1:]
        assert serve_check(llama + ([] if _vllm() else ["--no-vllm"])) == 0
