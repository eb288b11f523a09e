"""The GPU image's pins agree with megatron-core's declared requirements (no docker needed):
the Dockerfile's NGC PyTorch release ships a Transformer Engine, torch and Python that
megatron-core 0.16.1 and setup.py accept, the image installs pap with the NGC pip
constraint off and checks itself at build time, and setup.py pins what the tests ran with."""

import importlib.metadata as metadata
import re
import subprocess
import sys
from pathlib import Path

from packaging.specifiers import SpecifierSet
from packaging.version import Version

from pap.env_check import NGC_PYTORCH, megatron_requirement, problems

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = (REPO / "Dockerfile").read_text()
SETUP = (REPO / "setup.py").read_text()


def _setup_constant(name: str) -> str:
    return re.search(rf'^{name} = "([^"]+)"', SETUP, re.M).group(1)


def _fits(version: str, specifier: str) -> bool:
    return SpecifierSet(specifier, prereleases=True).contains(Version(version))


def test_the_base_release_ships_what_megatron_core_supports():
    release = re.search(r"^ARG NGC_PYTORCH=(\S+)$", DOCKERFILE, re.M).group(1)
    assert "FROM nvcr.io/nvidia/pytorch:${NGC_PYTORCH}-py3" in DOCKERFILE
    assert release in NGC_PYTORCH, f"NGC PyTorch {release} is not one pap.env_check knows"
    stack = NGC_PYTORCH[release]
    te_range = megatron_requirement("transformer-engine")
    assert te_range and _fits(stack["transformer_engine"], te_range), (stack, te_range)
    assert _fits(stack["torch"], megatron_requirement("torch"))
    assert _fits(stack["torch"], re.search(r'"torch(>=[^"]+)"', SETUP).group(1))
    python = Version(stack["python"] + ".0")
    assert SpecifierSet(metadata.metadata("megatron-core")["Requires-Python"] or "").contains(python)
    assert SpecifierSet(re.search(r'python_requires="([^"]+)"', SETUP).group(1)).contains(python)
    # Every release pap.env_check lists fits, so moving the ARG among them stays safe.
    assert all(_fits(s["transformer_engine"], te_range) for s in NGC_PYTORCH.values())


def test_setup_pins_are_the_installed_versions():
    assert _setup_constant("MEGATRON_CORE") == f"megatron-core=={metadata.version('megatron-core')}"
    assert _setup_constant("TRANSFORMERS") == f"transformers=={metadata.version('transformers')}"
    assert _setup_constant("TOKENIZERS") == f"tokenizers=={metadata.version('tokenizers')}"


def test_the_image_installs_without_the_ngc_constraint_and_checks_itself():
    install = DOCKERFILE[DOCKERFILE.index("RUN pip freeze"):]
    assert "PIP_CONSTRAINT= pip install" in install and "'.[hf]'" in install
    assert "python -m pap.env_check --gpu-stack --unchanged /tmp/image-stack.txt" in install


def test_env_check_passes_here_and_names_what_the_gpu_stack_lacks(tmp_path):
    assert problems(gpu_stack=False) == []
    found = problems(gpu_stack=True)
    names = " ".join(found)
    for module in ("transformer_engine", "flash_attn", "apex"):
        assert module in names or _importable(module), found
    freeze = tmp_path / "freeze.txt"
    freeze.write_text("torch==0.0.1\nnot-a-real-package==1.0\n")
    changed = problems(gpu_stack=False, unchanged=freeze)
    assert any("torch changed from 0.0.1" in c for c in changed) and any("not-a-real-package" in c for c in changed)
    done = subprocess.run([sys.executable, "-m", "pap.env_check", "--gpu-stack"], capture_output=True, text=True,
                          cwd=REPO, timeout=120)
    assert done.returncode == 1 and all(l.startswith("error: ") for l in done.stderr.strip().splitlines())


def _importable(module: str) -> bool:
    try:
        __import__(module)
    except Exception:
        return False
    return True
