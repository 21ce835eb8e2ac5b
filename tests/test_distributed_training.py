"""A torchtitan-style training loop on a 2-D mesh -- FSDP2 over ``dp``, tensor parallel over
``tp`` with the LM head's logits left sharded over the vocabulary, ``loss_parallel()`` around the
forward and backward, torch's ``clip_grad_norm_``, DCP checkpoints -- run once with torch's
``F.cross_entropy`` + ``torch.optim.AdamW`` and once with ``fastgd.cross_entropy`` /
``fastgd.linear_cross_entropy`` + ``fastgd.AdamW``, nothing else changed. 4 gloo ranks.

The vocabulary (37) and the hidden sizes split unevenly over the ranks on purpose; each
data-parallel rank trains on its own batch, the same within its tensor-parallel group.
"""
from __future__ import annotations

import pytest
import torch

from distributed import run_ranks
from tolerances import SAME_PRECISION

VOCAB, DIM, HIDDEN, SEQ, BATCH = 37, 12, 20, 8, 3
STEPS_BEFORE, STEPS_AFTER = 2, 2
MAX_NORM = 0.5  # small enough that clipping acts at every step
RTOL, ATOL = SAME_PRECISION[torch.float32]


class TinyLM(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = torch.nn.Embedding(VOCAB, DIM)
        self.up = torch.nn.Linear(DIM, HIDDEN)
        self.down = torch.nn.Linear(HIDDEN, DIM)
        self.head = torch.nn.Linear(DIM, VOCAB, bias=False)

    def forward(self, tokens: torch.Tensor, hidden_only: bool = False) -> torch.Tensor:
        """The logits, or the last hidden states for a loss that applies the head itself (through
        ``forward``: FSDP2 gathers the parameters in the root's forward hooks)."""
        x = self.embed(tokens)
        # no LayerNorm: its parameters would live on the dp mesh alone, and torch's
        # clip_grad_norm_ cannot stack norms from two meshes (torchtitan parallelises its norms)
        x = x + self.down(torch.nn.functional.gelu(self.up(x)))
        return x if hidden_only else self.head(x)


def _build(mesh):
    """torchtitan's recipe in miniature: tensor parallel first, then FSDP2 over ``dp``."""
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import Replicate
    from torch.distributed.tensor.parallel import (ColwiseParallel, RowwiseParallel,
                                                   parallelize_module)

    model = parallelize_module(TinyLM(), mesh["tp"], {
        "embed": RowwiseParallel(input_layouts=Replicate()),
        "up": ColwiseParallel(),
        "down": RowwiseParallel(),
        "head": ColwiseParallel(use_local_output=False),  # logits a DTensor, Shard(-1)
    })
    fully_shard(model, mesh=mesh["dp"])
    return model


def _optimizer(stack: str, model):
    import fastgd

    options = dict(lr=1e-2, weight_decay=0.1)
    cls = fastgd.AdamW if stack == "fastgd" else torch.optim.AdamW
    return cls(model.parameters(), **options)


def _loss(stack: str, model, tokens, labels):
    import torch.nn.functional as F

    import fastgd

    if stack == "torch":
        return F.cross_entropy(model(tokens).flatten(0, 1), labels.flatten())
    if stack == "fastgd":
        return fastgd.cross_entropy(model(tokens).flatten(0, 1), labels.flatten())
    # the fused LM-head loss on the same vocab-sharded head weight: the logits never whole.
    # After the root's forward FSDP2 keeps its parameters gathered until the backward, so the
    # head's weight here is the tp-sharded one the head would have used.
    hidden = model(tokens, hidden_only=True)
    return fastgd.linear_cross_entropy(hidden.flatten(0, 1), model.head.weight, labels.flatten())


def _train(stack: str, model, opt, mesh, first_step: int, steps: int) -> list:
    """The training step, as torchtitan writes it (``loss_parallel`` around forward and
    backward, the target a replicated DTensor as ``loss_parallel`` wants it)."""
    from torch.distributed.tensor import Replicate, distribute_tensor
    from torch.distributed.tensor.parallel import loss_parallel

    losses = []
    for step in range(first_step, first_step + steps):
        generator = torch.Generator().manual_seed(100 * step + mesh["dp"].get_local_rank())
        sequence = torch.randint(0, VOCAB, (BATCH, SEQ + 1), generator=generator)
        tokens = sequence[:, :-1]
        labels = distribute_tensor(sequence[:, 1:].contiguous(), mesh["tp"], [Replicate()])
        with loss_parallel():
            loss = _loss(stack, model, tokens, labels)
            loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_NORM, foreach=True)
        opt.step()
        opt.zero_grad()
        losses.append(loss.full_tensor() if hasattr(loss, "full_tensor") else loss.detach())
    return losses


def _state(model, opt) -> dict:
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_state, optim_state = get_state_dict(model, opt)
    return {"model": model_state, "optim": optim_state}


def _loop(rank, world_size, folder: str, stack: str) -> None:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_state_dict
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor

    mesh = init_device_mesh("cpu", (2, world_size // 2), mesh_dim_names=("dp", "tp"))
    torch_model = _build(mesh)
    torch_opt = _optimizer("torch", torch_model)
    expected = _train("torch", torch_model, torch_opt, mesh, 0, STEPS_BEFORE + STEPS_AFTER)

    # the same loop with fastgd, checkpointed with DCP half-way and resumed into a fresh model
    model = _build(mesh)
    opt = _optimizer(stack, model)
    losses = _train(stack, model, opt, mesh, 0, STEPS_BEFORE)
    dcp.save(_state(model, opt), checkpoint_id=f"{folder}/{stack}")
    uninterrupted = losses + _train(stack, model, opt, mesh, STEPS_BEFORE, STEPS_AFTER)
    final = {name: p.full_tensor() for name, p in model.named_parameters()}

    resumed_model = _build(mesh)
    resumed_opt = _optimizer(stack, resumed_model)
    _train(stack, resumed_model, resumed_opt, mesh, 0, 1)  # state to load into, then overwrite
    state = _state(resumed_model, resumed_opt)
    dcp.load(state, checkpoint_id=f"{folder}/{stack}")
    set_state_dict(resumed_model, resumed_opt, model_state_dict=state["model"],
                   optim_state_dict=state["optim"])
    resumed = _train(stack, resumed_model, resumed_opt, mesh, STEPS_BEFORE, STEPS_AFTER)

    for step, (ours, theirs) in enumerate(zip(uninterrupted, expected)):
        torch.testing.assert_close(ours, theirs, rtol=RTOL, atol=ATOL, msg=f"loss {step}")
    for ours, again in zip(uninterrupted[STEPS_BEFORE:], resumed):
        assert torch.equal(ours, again)  # the resumed run is the uninterrupted one, bit for bit
    for (name, p), q, r in zip(model.named_parameters(), torch_model.parameters(),
                               resumed_model.parameters()):
        assert isinstance(p, DTensor) and p.device_mesh.ndim == 2, name
        torch.testing.assert_close(p.full_tensor(), q.full_tensor(), rtol=RTOL, atol=ATOL,
                                   msg=name)
        assert torch.equal(r.full_tensor(), final[name]), name
        for key in ("exp_avg", "exp_avg_sq"):
            moment = resumed_opt.state[r][key]
            assert isinstance(moment, DTensor) and moment.placements == r.placements, name


@pytest.mark.parametrize("stack", ["fastgd", "fastgd linear"])
def test_torchtitan_style_loop_swaps_in_fastgd_and_checkpoints_with_dcp(tmp_path, stack):
    run_ranks(_loop, 4, str(tmp_path), stack, timeout=300)
