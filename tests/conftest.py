import os

import pytest
import torch

# Tests must only ever talk to loopback, and Ray must not phone home.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture
def small_model_cfg():
    from nestgen.config import ModelConfig
    return ModelConfig(vocab_size=11, grid=[4, 4], num_classes=3, width=64, depth=2, heads=8,
                       nest_factors=[1, 2, 4, 8])
