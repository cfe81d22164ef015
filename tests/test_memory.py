"""`fused.keep_freed_memory`: large tensors freed in one step are reused in the next."""

import resource
import sys

import pytest
import torch

from rnnlm import fused


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc settings")
def test_large_tensors_reuse_freed_pages():
    if not fused.keep_freed_memory():
        pytest.skip("this C library has no mallopt")
    a, w = torch.randn(1024, 448), torch.randn(4096, 448)

    def step():  # the default config's logits and their softmax: 16 MB each, freed at the end
        logits = a @ w.t()
        return (torch.softmax(logits, 1) - torch.log_softmax(logits, 1).exp()).sum()

    step()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
        step()
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 10
    # Measured without the settings: ~4,500 page faults (4 KB each) per call, the freed
    # 16 MB blocks mapped anew; with them ~400.
    assert faults < 2000
