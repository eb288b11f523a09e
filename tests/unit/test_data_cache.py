"""The data-cache check runs only where megatron writes the cache first (global rank 0): on
another rank it could read an index rank 0 is still writing and call it damaged."""

import numpy as np
import pytest

from pap import data
from pap.config import config_from_dict
from pap.errors import PapError
from tests.helpers import tiny_config


@pytest.mark.parametrize("rank,refused", [(0, True), (1, False)])
def test_only_rank_zero_checks_the_data_cache(rank, refused, tmp_path, random_dataset, monkeypatch):
    cache = tmp_path / "data_cache"
    cache.mkdir()
    index = cache / "sample_index.npy"
    np.save(index, np.arange(1000))
    index.write_bytes(index.read_bytes()[:-8])  # what another rank sees mid-write
    import torch.distributed as dist
    from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder

    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_rank", lambda group=None: rank)
    monkeypatch.setattr(BlendedMegatronDatasetBuilder, "build", lambda self: ("train", None, None))
    cfg = config_from_dict(tiny_config(random_dataset))
    if refused:
        with pytest.raises(PapError, match="damaged data-cache file"):
            data.build_datasets(cfg, 8, 0, str(cache))
    else:
        assert data.build_datasets(cfg, 8, 0, str(cache)) == ("train", None)
