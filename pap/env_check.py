"""Check that this Python has what a pap run needs, with versions that fit megatron-core.

    python -m pap.env_check                 # pap, megatron-core, torch, HF libraries
    python -m pap.env_check --gpu-stack     # also CUDA torch, Transformer Engine, flash-attn, apex
    python -m pap.env_check --gpu-stack --unchanged FREEZE   # and those still as FREEZE lists them

The Dockerfile runs it at build time, so an image that lacks a piece, or whose pip
install replaced the image's own CUDA builds, fails to build instead of running slowly
on the local fallbacks. Prints one line per problem and exits 1, or one `ok` line.

`NGC_PYTORCH` records what each NGC PyTorch release ships (from NVIDIA's release notes
and the containers' own version strings) for the releases whose Transformer Engine fits
megatron-core 0.16.1 (`transformer-engine>=2.9.0a0,<2.12.0`); the Dockerfile's base is
one of them, and a test checks it against megatron-core's declared requirements.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata as metadata
import re
import sys
from pathlib import Path
from typing import List, Optional

NGC_PYTORCH = {
    # release: versions in the image. 25.11 is Megatron-LM's own CI image for megatron-core 0.16.
    "25.11": {"python": "3.12", "torch": "2.10.0a0", "transformer_engine": "2.9.0", "cuda": "13.0"},
    "25.12": {"python": "3.12", "torch": "2.10.0a0", "transformer_engine": "2.10.0", "cuda": "13.1"},
    "26.01": {"python": "3.12", "torch": "2.10.0a0", "transformer_engine": "2.11.0", "cuda": "13.1"},
}


def megatron_requirement(package: str) -> Optional[str]:
    """The version specifier megatron-core declares for `package` (any extra), e.g. '<2.12.0,>=2.9.0a0'."""
    from packaging.requirements import Requirement

    for line in metadata.requires("megatron-core") or []:
        requirement = Requirement(line)
        if requirement.name.replace("_", "-") == package.replace("_", "-"):
            return str(requirement.specifier)
    return None


def _fits(version: str, specifier: Optional[str]) -> bool:
    from packaging.specifiers import SpecifierSet
    from packaging.version import Version

    if not specifier:
        return True
    return SpecifierSet(specifier, prereleases=True).contains(Version(version.split("+")[0]))


def problems(gpu_stack: bool, unchanged: Optional[Path] = None) -> List[str]:
    """What is missing or does not fit, one sentence each (empty: all good)."""
    found = []
    for module in ("pap", "megatron.core", "torch", "transformers", "tokenizers", "sentencepiece"):
        try:
            importlib.import_module(module)
        except Exception as exc:
            found.append(f"{module} does not import ({type(exc).__name__}: {exc})")
    if gpu_stack:
        import torch

        if torch.version.cuda is None:
            found.append(f"torch {torch.__version__} is a CPU build; the image's CUDA build was replaced "
                         f"(install pap with PIP_CONSTRAINT= and without upgrading torch)")
        try:
            import transformer_engine  # noqa: F401
            import transformer_engine.pytorch  # noqa: F401

            version = metadata.version("transformer-engine") if _installed("transformer-engine") \
                else getattr(transformer_engine, "__version__", "0")
            wanted = megatron_requirement("transformer-engine")
            if not _fits(version, wanted):
                found.append(f"transformer_engine {version} is outside megatron-core's supported range {wanted}; "
                             f"use an NGC PyTorch release from pap.env_check.NGC_PYTORCH")
        except Exception as exc:
            found.append(f"transformer_engine does not import ({type(exc).__name__}: {exc})")
        for module, why in (("flash_attn", "flash attention"), ("apex", "apex (fused Adam, fused norms)")):
            try:
                importlib.import_module(module)
            except Exception as exc:
                found.append(f"{module} does not import: {why} missing ({type(exc).__name__}: {exc})")
    if unchanged is not None:
        found += _changed_since(unchanged)
    return found


def _installed(distribution: str) -> bool:
    try:
        metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return False
    return True


def _changed_since(freeze_file: Path) -> List[str]:
    """GPU-stack packages whose installed version differs from `freeze_file` (`pip freeze` lines)."""
    changed = []
    for line in freeze_file.read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_.\-]+)\s*(?:==|@)\s*(.+)$", line.strip())
        if not match:
            continue
        name, before = match.group(1), match.group(2).strip()
        try:
            now = metadata.version(name)
        except metadata.PackageNotFoundError:
            changed.append(f"{name} was removed by the pap install (was {before})")
            continue
        if "==" in line and now != before:
            changed.append(f"{name} changed from {before} to {now} during the pap install; the image's build "
                           f"must stay (install with PIP_CONSTRAINT= and pin nothing it provides)")
    return changed


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gpu-stack", action="store_true",
                        help="also require CUDA torch, Transformer Engine, flash-attn and apex")
    parser.add_argument("--unchanged", type=Path, metavar="FREEZE",
                        help="`pip freeze` lines of packages that must keep their versions")
    args = parser.parse_args(argv)
    import warnings

    # megatron-core warns at import when TE/apex are absent; this tool reports that itself.
    warnings.filterwarnings("ignore", message=r".*(Transformer Engine|Apex|apex).*")
    found = problems(args.gpu_stack, args.unchanged)
    for problem in found:
        print(f"error: {problem}", file=sys.stderr)
    if found:
        return 1
    import torch

    print(f"ok: megatron-core {metadata.version('megatron-core')}, torch {torch.__version__}"
          + (f", transformer-engine {metadata.version('transformer-engine')}" if _installed("transformer-engine")
             else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
