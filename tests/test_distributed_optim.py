"""fastgd's optimizers on FSDP2 (``fully_shard``) parameters: DTensors whose local shards the
kernels update, against torch.optim under the same sharding -- 2 and 4 gloo ranks on CPU.

Model shapes are chosen so the shards are uneven and, at 4 ranks, one is empty: ``Linear(16, 5)``
has 5 rows of weight and bias, split 3/2 over 2 ranks and 2/2/1/0 over 4.
"""
import pytest
import torch

from distributed import run_ranks
from tolerances import SAME_PRECISION

RTOL, ATOL = SAME_PRECISION[torch.float32]

STEPS = 3


def _model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 5))


def _sharded(mesh):
    from torch.distributed.fsdp import fully_shard

    model = _model()
    for layer in (model[0], model[2]):
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def _groups(model, grouped: bool):
    if not grouped:
        return model.parameters()
    # weights decay, biases do not: the param-group layout of most training scripts
    return [{"params": [model[0].weight, model[2].weight]},
            {"params": [model[0].bias, model[2].bias], "weight_decay": 0.0, "lr": 3e-2}]


def _train(rank, world_size, options: dict, backend_name: str) -> None:
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor

    import fastgd

    mesh = init_device_mesh("cpu", (world_size,))
    clip = options.pop("max_grad_norm", None)
    grouped = options.pop("grouped", False)
    ours_model, torch_model = _sharded(mesh), _sharded(mesh)
    ours = fastgd.AdamW(_groups(ours_model, grouped), lr=1e-2, max_grad_norm=clip, **options)
    theirs = torch.optim.AdamW(_groups(torch_model, grouped), lr=1e-2, **options)
    generator = torch.Generator().manual_seed(1 + rank)  # each rank its own batch, as in DP
    for _ in range(STEPS):
        x = torch.randn(6, 8, generator=generator)
        for model in (ours_model, torch_model):
            model(x).square().mean().backward()
        torch_norm = None
        if clip is not None:
            torch_norm = torch.nn.utils.clip_grad_norm_(torch_model.parameters(), clip)
        with fastgd.force_backend(backend_name):
            ours.step()
        theirs.step()
        if clip is not None:
            # the norm of the whole model, across ranks: what clip_grad_norm_ computed
            full = torch_norm.full_tensor() if isinstance(torch_norm, DTensor) else torch_norm
            torch.testing.assert_close(ours.grad_norm.float(), full.float(), rtol=RTOL, atol=ATOL)
        for opt in (ours, theirs):
            opt.zero_grad()
    for (name, p), q in zip(ours_model.named_parameters(), torch_model.parameters()):
        assert isinstance(p, DTensor)
        torch.testing.assert_close(p.full_tensor(), q.full_tensor(), rtol=RTOL, atol=ATOL, msg=name)
        state = ours.state[p]
        for key in ("exp_avg", "exp_avg_sq"):
            assert isinstance(state[key], DTensor), (name, key, type(state[key]))
            assert state[key].placements == p.placements and state[key].device_mesh == mesh
            torch.testing.assert_close(state[key].full_tensor(),
                                       theirs.state[q][key].full_tensor(), rtol=RTOL, atol=ATOL)
    dist.barrier()


@pytest.mark.parametrize("backend_name", ["auto", "torch"])  # kernels (interpreted), torch path
@pytest.mark.parametrize("options", [
    {},
    {"max_grad_norm": 0.05},  # small enough that every step clips
    {"amsgrad": True, "grouped": True, "max_grad_norm": 0.05},
], ids=["plain", "clip", "amsgrad+groups+clip"])
def test_fsdp2_adamw_matches_torch_on_2_ranks(options, backend_name):
    run_ranks(_train, 2, dict(options), backend_name)


def test_fsdp2_adamw_with_an_empty_shard_on_4_ranks():
    run_ranks(_train, 4, {"max_grad_norm": 0.05}, "auto")


def _unwrapped_dtensor_is_refused(rank, world_size) -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    from fastgd import guard
    from fastgd.errors import InvalidTypeError

    mesh = init_device_mesh("cpu", (world_size,))
    weight = distribute_tensor(torch.randn(4, 3), mesh, [Shard(0)])
    with pytest.raises(InvalidTypeError, match="DTensor.*to_local"):
        guard.require_tensor(weight, "weight")


def test_a_dtensor_that_reaches_the_launch_guard_is_refused():
    run_ranks(_unwrapped_dtensor_is_refused, 2)


def _tensor_parallel(rank, world_size, backend_name: str) -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor
    from torch.distributed.tensor.parallel import (ColwiseParallel, RowwiseParallel,
                                                   parallelize_module)

    import fastgd

    mesh = init_device_mesh("cpu", (world_size,))
    plan = {"0": ColwiseParallel(), "2": RowwiseParallel()}
    # placements: 0.weight/0.bias Shard(0), 2.weight Shard(1), 2.bias Replicate -- gradients
    # sharded in two ways in one step, so the norm takes the per-sharding path
    ours_model = parallelize_module(_model(), mesh, plan)
    torch_model = parallelize_module(_model(), mesh, plan)
    ours = fastgd.AdamW(ours_model.parameters(), lr=1e-2, max_grad_norm=0.05)
    theirs = torch.optim.AdamW(torch_model.parameters(), lr=1e-2)
    generator = torch.Generator().manual_seed(0)  # the same batch on every rank, as TP needs
    for _ in range(STEPS):
        x = torch.randn(6, 8, generator=generator)
        for model in (ours_model, torch_model):
            model(x).square().mean().backward()
        torch_norm = torch.nn.utils.clip_grad_norm_(torch_model.parameters(), 0.05)
        with fastgd.force_backend(backend_name):
            ours.step()
        theirs.step()
        full = torch_norm.full_tensor() if isinstance(torch_norm, DTensor) else torch_norm
        torch.testing.assert_close(ours.grad_norm.float(), full.float(), rtol=RTOL, atol=ATOL)
        for opt in (ours, theirs):
            opt.zero_grad()
    for p, q in zip(ours_model.parameters(), torch_model.parameters()):
        torch.testing.assert_close(p.full_tensor(), q.full_tensor(), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("backend_name", ["auto", "torch"])
def test_tensor_parallel_adamw_with_clipping_matches_torch(backend_name):
    run_ranks(_tensor_parallel, 2, backend_name)


def _fsdp_and_tensor_parallel(rank, world_size) -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor
    from torch.distributed.tensor.parallel import (ColwiseParallel, RowwiseParallel,
                                                   parallelize_module)

    import fastgd

    mesh = init_device_mesh("cpu", (2, world_size // 2), mesh_dim_names=("dp", "tp"))
    plan = {"0": ColwiseParallel(), "2": RowwiseParallel()}

    def build():
        model = parallelize_module(_model(), mesh["tp"], plan)
        fully_shard(model, mesh=mesh["dp"])  # 2-D DTensors: (Shard(0), <tp placement>)
        return model

    ours_model, torch_model = build(), build()
    ours = fastgd.AdamW(ours_model.parameters(), lr=1e-2, max_grad_norm=0.05)
    theirs = torch.optim.AdamW(torch_model.parameters(), lr=1e-2)
    # one batch per data-parallel rank, the same within its tensor-parallel group
    generator = torch.Generator().manual_seed(mesh["dp"].get_local_rank())
    for _ in range(STEPS):
        x = torch.randn(6, 8, generator=generator)
        for model in (ours_model, torch_model):
            model(x).square().mean().backward()
        torch_norm = torch.nn.utils.clip_grad_norm_(torch_model.parameters(), 0.05)
        ours.step()
        theirs.step()
        full = torch_norm.full_tensor() if isinstance(torch_norm, DTensor) else torch_norm
        torch.testing.assert_close(ours.grad_norm.float(), full.float(), rtol=RTOL, atol=ATOL)
        for opt in (ours, theirs):
            opt.zero_grad()
    for p, q in zip(ours_model.parameters(), torch_model.parameters()):
        assert p.device_mesh.ndim == 2
        torch.testing.assert_close(p.full_tensor(), q.full_tensor(), rtol=RTOL, atol=ATOL)


def test_fsdp2_plus_tensor_parallel_on_a_2d_mesh_matches_torch():
    run_ranks(_fsdp_and_tensor_parallel, 4)
