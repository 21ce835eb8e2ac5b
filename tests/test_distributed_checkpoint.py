"""DCP checkpoints of fastgd's optimizers on FSDP2: saved at 2 ranks, loaded at 2 and at 4
(resharded), the run continues bit for bit as if uninterrupted; and a fastgd checkpoint loads
into torch.optim.AdamW and a torch one into fastgd.AdamW.

Every rank trains on the same batch, so the averaged gradient -- and with it every update -- is
the same at any power-of-two number of ranks, exactly: that is what makes a resharded resume
comparable bit for bit. (No clipping here: the norm's summation order depends on the sharding.)
"""
from pathlib import Path

import pytest
import torch

from distributed import run_ranks

STEPS_BEFORE, STEPS_AFTER = 2, 2


def _setup(world_size: int, optimizer: str, clip=None):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    import fastgd

    mesh = init_device_mesh("cpu", (world_size,))
    torch.manual_seed(0)
    # 5-row layers: uneven shards at 2 ranks, an empty one at 4
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 5))
    for layer in (model[0], model[2]):
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    options = dict(lr=1e-2, weight_decay=0.1, amsgrad=True)
    if optimizer == "fastgd":
        return model, fastgd.AdamW(model.parameters(), max_grad_norm=clip, **options)
    return model, torch.optim.AdamW(model.parameters(), **options)


def _train(model, opt, first_step: int, steps: int) -> None:
    for step in range(first_step, first_step + steps):
        x = torch.randn(6, 8, generator=torch.Generator().manual_seed(step))  # same on all ranks
        model(x).square().mean().backward()
        opt.step()
        opt.zero_grad()


def _full_params(model) -> dict:
    return {name: p.full_tensor() for name, p in model.named_parameters()}


def _save(rank, world_size, folder: str, optimizer: str) -> None:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model, opt = _setup(world_size, optimizer)
    _train(model, opt, 0, STEPS_BEFORE)
    model_state, optim_state = get_state_dict(model, opt)
    dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=f"{folder}/{optimizer}")
    _train(model, opt, STEPS_BEFORE, STEPS_AFTER)
    final = _full_params(model)
    if rank == 0:
        torch.save(final, f"{folder}/{optimizer}_final.pt")


def _resume(rank, world_size, folder: str, saved_by: str, optimizer: str, clip=None) -> None:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import DefaultLoadPlanner
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
    from torch.distributed.tensor import DTensor

    model, opt = _setup(world_size, optimizer, clip)
    _train(model, opt, 0, 1)  # state to load into (and parameters to overwrite)
    model_state, optim_state = get_state_dict(model, opt)
    state = {"model": model_state, "optim": optim_state}
    # a clipping fastgd optimizer has a key (max_grad_norm) a torch checkpoint lacks
    planner = DefaultLoadPlanner(allow_partial_load=clip is not None)
    dcp.load(state, checkpoint_id=f"{folder}/{saved_by}", planner=planner)
    set_state_dict(model, opt, model_state_dict=state["model"], optim_state_dict=state["optim"])
    if clip is not None:
        assert opt.param_groups[0]["max_grad_norm"] == clip
    for p in model.parameters():
        for key in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
            assert isinstance(opt.state[p][key], DTensor)
    _train(model, opt, STEPS_BEFORE, STEPS_AFTER)
    expected = torch.load(f"{folder}/{saved_by}_final.pt", weights_only=True)
    for name, value in _full_params(model).items():
        if saved_by == optimizer:  # the same algorithm after the same updates: bit for bit
            assert torch.equal(value, expected[name]), name
        else:  # the other library's arithmetic: rounding apart
            torch.testing.assert_close(value, expected[name], rtol=1e-5, atol=1e-6, msg=name)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("dcp")
    for optimizer in ("fastgd", "torch"):
        run_ranks(_save, 2, str(folder), optimizer)
    return folder


@pytest.mark.parametrize("world_size", [2, 4])  # 4: resharded, one rank's last shard empty
def test_fastgd_resumes_bit_exact_from_dcp(checkpoints, world_size):
    run_ranks(_resume, world_size, str(checkpoints), "fastgd", "fastgd")


@pytest.mark.parametrize("saved_by, loaded_by", [("fastgd", "torch"), ("torch", "fastgd")])
def test_checkpoints_move_between_torch_and_fastgd(checkpoints, saved_by, loaded_by):
    run_ranks(_resume, 2, str(checkpoints), saved_by, loaded_by)


def test_a_clipping_fastgd_optimizer_loads_a_torch_checkpoint(checkpoints):
    # max_grad_norm large enough never to clip: the run is torch's, rounding apart; the clip
    # setting is the optimizer's own after the load (the checkpoint has none)
    run_ranks(_resume, 2, str(checkpoints), "torch", "fastgd", 1e3)
