"""Ship pap's remote-code Llama next to exported weights."""

import shutil
from pathlib import Path

FILES = ("configuration_pap_llama.py", "modeling_pap_llama.py")


def write_code(out_dir: Path) -> None:
    """Copy the configuration and modeling files that `config.json`'s auto_map names."""
    source = Path(__file__).parent / "remote_code"
    for name in FILES:
        shutil.copy2(source / name, out_dir / name)
