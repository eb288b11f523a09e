"""Each CPU patch is needed (its upstream call site fails without it) and inert on CUDA.

Patches change process-wide state, so every check runs in a fresh interpreter: first
with all patches but the one under test (the call site must fail with the error the
patch documents), then with that patch installed too (the same call must work).
"""

import subprocess
import sys
import textwrap

import pytest

import megatron_patches

SETUP = """
import os, warnings
warnings.filterwarnings("ignore")
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=os.environ["TEST_PORT"], RANK="0", WORLD_SIZE="1")
import torch, torch.distributed as dist
dist.init_process_group("gloo")
import importlib, megatron_patches
from megatron.core import parallel_state as ps
ps.initialize_model_parallel()
name = {name!r}
megatron_patches.apply(skip=[name])
patch = importlib.import_module("megatron_patches." + name)

def call_site():
{call_site}

try:
    call_site()
except Exception as exc:
    print("WITHOUT:", type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")
else:
    print("WITHOUT: ok")
patch.apply()
call_site()
print("WITH: ok")
"""

# patch name -> (code exercising the upstream call site, text expected in the failure)
CALL_SITES = {
    "rng_tracker": (
        "from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed\n"
        "model_parallel_cuda_manual_seed(1234)",
        "CUDA"),
    "recompute_rng": (
        # What CheckpointFunction does around a recomputed chunk.
        "from megatron.core.tensor_parallel.random import _get_all_rng_states, _set_all_rng_states\n"
        "states = _get_all_rng_states(); first = torch.rand(3)\n"
        "_set_all_rng_states(*states); assert torch.equal(torch.rand(3), first)",
        "CUDA"),
    "cuda_device": (
        "from megatron.core.models.common.embeddings.rotary_pos_embedding import RotaryEmbedding\n"
        "assert RotaryEmbedding(kv_channels=16, rotary_percent=1.0)(8).shape[0] == 8",
        "CUDA"),
    "cuda_factories": (
        "from megatron.core.transformer.utils import get_default_causal_mask\n"
        "assert get_default_causal_mask(4).device.type == 'cpu'",
        "CUDA"),
    "tensor_type_strings": (
        "from megatron.core.optimizer.clip_grads import clip_grad_by_total_norm_fp32\n"
        "p = torch.nn.Parameter(torch.ones(4)); p.grad = torch.full((4,), 3.0)\n"
        "clip_grad_by_total_norm_fp32([p], max_norm=1.0, total_norm=6.0)\n"
        "assert torch.allclose(p.grad, torch.full((4,), 0.5), atol=1e-5)",
        "AssertionError"),
    "tensor_cuda": (
        # The statement of language_module.py:244, run as code of that module.
        "import megatron.core.models.common.language_module.language_module as lm\n"
        "w = torch.nn.Parameter(torch.ones(2))\n"
        "exec('w.data = w.data.cuda()', vars(lm), {'w': w})\n"
        "assert w.device.type == 'cpu'",
        "CUDA"),
    "torch_norm_sequence_parallel": (
        "from megatron.core.transformer.transformer_config import TransformerConfig\n"
        "from megatron.core.transformer.torch_norm import WrappedTorchNorm\n"
        "cfg = TransformerConfig(num_layers=1, hidden_size=8, num_attention_heads=2, normalization='RMSNorm')\n"
        "cfg.sequence_parallel = True\n"
        "norm = WrappedTorchNorm(cfg, 8)\n"
        "assert norm.weight.sequence_parallel is True",
        "sequence parallel"),
}


def test_every_patch_has_a_check():
    assert set(CALL_SITES) == set(megatron_patches.PATCH_NAMES)


@pytest.mark.parametrize("name", sorted(CALL_SITES))
def test_patch_is_needed_and_sufficient(name, unused_port):
    code, expected_failure = CALL_SITES[name]
    script = SETUP.format(name=name, call_site=textwrap.indent(code, "    "))
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                         env={**__import__("os").environ, "TEST_PORT": str(unused_port)})
    assert run.returncode == 0, run.stderr[-3000:]
    without = next(line for line in run.stdout.splitlines() if line.startswith("WITHOUT:"))
    assert without != "WITHOUT: ok", f"{name}: the call site works without the patch"
    assert expected_failure.lower() in without.lower(), without
    assert "WITH: ok" in run.stdout


def test_inert_when_cuda_is_usable(monkeypatch):
    """With CUDA usable, apply() installs nothing and leaves torch untouched."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    before = (torch.cuda.current_device, torch.Tensor.type, torch.Tensor.cuda)
    assert megatron_patches.apply() == []
    assert (torch.cuda.current_device, torch.Tensor.type, torch.Tensor.cuda) == before
    assert megatron_patches.applied() == []


def test_unknown_patch_name_is_an_error():
    with pytest.raises(ValueError, match="unknown megatron patch"):
        megatron_patches.apply(skip=["no_such_patch"])
