"""fastgd.AdamW under DDP and as ZeroRedundancyOptimizer's optimizer_class: the same parameters
as torch.optim.AdamW in the same wrapper after a few steps, on 2 gloo ranks (each rank its own
batch, as data parallelism has it)."""
import pytest
import torch

from distributed import run_ranks
from tolerances import SAME_PRECISION

RTOL, ATOL = SAME_PRECISION[torch.float32]
STEPS = 3


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    # 5 outputs: ZeRO's partition of 4 tensors over 2 ranks is then uneven in size
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 5))


def _compare(rank, world_size, wrapper: str) -> None:
    from torch.distributed.optim import ZeroRedundancyOptimizer
    from torch.nn.parallel import DistributedDataParallel

    import fastgd

    runs = {}
    for name, cls in (("fastgd", fastgd.AdamW), ("torch", torch.optim.AdamW)):
        model = DistributedDataParallel(_model())
        if wrapper == "zero":
            opt = ZeroRedundancyOptimizer(model.parameters(), optimizer_class=cls, lr=1e-2,
                                          weight_decay=0.1)
        else:
            opt = cls(model.parameters(), lr=1e-2, weight_decay=0.1)
        generator = torch.Generator().manual_seed(1 + rank)
        for _ in range(STEPS):
            model(torch.randn(6, 8, generator=generator)).square().mean().backward()
            opt.step()
            opt.zero_grad()
        runs[name] = [p.detach().clone() for p in model.parameters()]
    moved = max((p - q).abs().max() for p, q in zip(runs["fastgd"], _model().parameters()))
    assert moved > 1e-3, "the steps must change the parameters"
    for ours, theirs in zip(runs["fastgd"], runs["torch"]):
        torch.testing.assert_close(ours, theirs, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("wrapper", ["ddp", "zero"])
def test_adamw_under_ddp_and_zero_matches_torch(wrapper):
    run_ranks(_compare, 2, wrapper)
