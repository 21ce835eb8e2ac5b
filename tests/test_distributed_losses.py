"""Vocabulary-parallel ``fastgd.cross_entropy``: logits a DTensor sharded over the classes, on 2
and 4 gloo ranks, against the same loss on the unsharded logits (loss, ``lse`` and the gradient),
with every option, and against torch's own ``loss_parallel()`` in a tensor-parallel LM head.

Vocabulary sizes are chosen so the slices are uneven: 37 classes split 19/18 over 2 ranks; 5
classes split 2/2/1/0 over 4 ranks (one rank holds no class at all).
"""
import pytest
import torch

from distributed import run_ranks
from tolerances import VOCAB_PARALLEL

# Every option, one at a time and together; each is a separate term of the row loss or of its
# reduction, so a term combined wrongly across ranks shows in its own case.
CASES = [
    {},
    {"reduction": "sum"},
    {"reduction": "none"},
    {"weight": True, "label_smoothing": 0.1},
    {"label_smoothing": 0.2, "reduction": "none"},
    {"weight": True},  # torch's weighted mean
    {"ignore_index": 3},  # a class index as the ignored value
    {"z_loss": 1e-2, "softcap": 3.0, "logit_scale": 1.7},
    {"num_items": 5},
    {"num_items": "tensor", "reduction": "sum", "z_loss": 1e-3},
    {"return_lse": True, "z_loss": 1e-2},
    {"weight": True, "label_smoothing": 0.1, "z_loss": 1e-2, "softcap": 5.0, "return_lse": True,
     "reduction": "none"},
]


def _case_kwargs(case: dict, n_classes: int, generator) -> dict:
    kwargs = dict(case)
    if kwargs.pop("weight", False):
        kwargs["weight"] = torch.rand(n_classes, generator=generator) + 0.5
    if kwargs.get("num_items") == "tensor":
        kwargs["num_items"] = torch.tensor(7.0)
    return kwargs


def _targets(n_rows: int, n_classes: int, generator, ignore_index: int) -> torch.Tensor:
    target = torch.randint(0, n_classes, (n_rows,), generator=generator)
    target[0] = n_classes - 1  # the last class: held by the last non-empty slice
    target[1] = ignore_index  # an ignored row
    target[2] = 0  # the first class: held by rank 0
    return target


def _compare(mesh, n_rows, n_classes, dtype, backend_name, cases, shape_3d=False) -> None:
    from torch.distributed.tensor import DTensor, Shard, distribute_tensor

    import fastgd

    rtol, atol = VOCAB_PARALLEL[dtype]
    for index, case in enumerate(cases):
        generator = torch.Generator().manual_seed(index)  # the same inputs on every rank
        kwargs = _case_kwargs(case, n_classes, generator)
        target = _targets(n_rows, n_classes, generator, kwargs.get("ignore_index", -100))
        full = (torch.randn(n_rows, n_classes, generator=generator) * 3).to(dtype)
        if shape_3d:  # (N, C, d): the class dimension is 1, not the last
            full = full.reshape(n_rows // 2, 2, n_classes).transpose(1, 2).contiguous()
            target = target.reshape(n_rows // 2, 2)
        sharded = distribute_tensor(full.detach(), mesh, [Shard(1)]).requires_grad_()
        full.requires_grad_()
        with fastgd.force_backend(backend_name):
            ours = fastgd.cross_entropy(sharded, target, **kwargs)
        with fastgd.force_backend(backend_name):
            truth = fastgd.cross_entropy(full, target, **kwargs)
        ours, truth = (out if isinstance(out, tuple) else (out,) for out in (ours, truth))
        for name, a, b in zip(("loss", "lse"), ours, truth):
            assert not isinstance(a, DTensor)
            torch.testing.assert_close(a, b, rtol=rtol, atol=atol, msg=f"{case}: {name}")
        # a gradient that reaches both outputs (z_loss and return_lse use lse's)
        seed = sum((out.double() * (k + 1.5)).sum() for k, out in enumerate(ours))
        seed.backward()
        sum((out.double() * (k + 1.5)).sum() for k, out in enumerate(truth)).backward()
        assert isinstance(sharded.grad, DTensor) and sharded.grad.placements == (Shard(1),)
        torch.testing.assert_close(sharded.grad.full_tensor(), full.grad, rtol=rtol, atol=atol,
                                   msg=f"{case}: gradient")


def _every_option(rank, world_size, backend_name, n_classes, dtype) -> None:
    from torch.distributed.device_mesh import init_device_mesh

    mesh = init_device_mesh("cpu", (world_size,))
    _compare(mesh, 6, n_classes, dtype, backend_name, CASES)
    _compare(mesh, 6, n_classes, dtype, backend_name, CASES[:3], shape_3d=True)


@pytest.mark.parametrize("backend_name", ["auto", "torch"])  # kernels (interpreted), torch path
def test_vocab_parallel_cross_entropy_every_option_on_2_ranks(backend_name):
    run_ranks(_every_option, 2, backend_name, 37, torch.float32)


def test_vocab_parallel_cross_entropy_with_an_empty_slice_on_4_ranks():
    run_ranks(_every_option, 4, "auto", 5, torch.float32)


def test_vocab_parallel_cross_entropy_in_bfloat16():
    # bfloat16 logits: the gradient is rounded to bfloat16 as in the unsharded kernel
    run_ranks(_every_option, 2, "auto", 37, torch.bfloat16)


def _against_loss_parallel(rank, world_size) -> None:
    """A tensor-parallel LM head (ColwiseParallel, logits left sharded), trained a few steps with
    fastgd.cross_entropy and, beside it, with torch's loss_parallel() + F.cross_entropy."""
    import torch.nn.functional as F
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Replicate, distribute_tensor
    from torch.distributed.tensor.parallel import (ColwiseParallel, loss_parallel,
                                                   parallelize_module)

    import fastgd

    mesh = init_device_mesh("cpu", (world_size,))
    heads = []
    for _ in range(2):
        torch.manual_seed(0)
        head = torch.nn.Linear(8, 37, bias=False)
        heads.append(parallelize_module(head, mesh, ColwiseParallel(use_local_output=False)))
    ours_head, torch_head = heads
    ours_opt = torch.optim.SGD(ours_head.parameters(), lr=0.5)
    torch_opt = torch.optim.SGD(torch_head.parameters(), lr=0.5)
    generator = torch.Generator().manual_seed(1)
    for _ in range(3):
        hidden = torch.randn(2, 5, 8, generator=generator)
        target = torch.randint(0, 37, (2, 5), generator=generator)
        target[0, 0] = -100
        ours = fastgd.cross_entropy(ours_head(hidden).flatten(0, 1), target.flatten())
        with loss_parallel():  # which takes the target as a replicated DTensor
            theirs = F.cross_entropy(torch_head(hidden).flatten(0, 1),
                                     distribute_tensor(target.flatten(), mesh, [Replicate()]))
            theirs.backward()
        ours.backward()
        torch.testing.assert_close(ours, theirs.full_tensor(), rtol=1e-5, atol=1e-6)
        for opt in (ours_opt, torch_opt):
            opt.step()
            opt.zero_grad()
    torch.testing.assert_close(ours_head.weight.full_tensor(), torch_head.weight.full_tensor(),
                               rtol=1e-5, atol=1e-6)


def test_vocab_parallel_cross_entropy_trains_as_torch_loss_parallel():
    run_ranks(_against_loss_parallel, 2)


def _bad_placements(rank, world_size) -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    import fastgd
    from fastgd.errors import InvalidValueError, TargetOutOfBoundsError

    mesh = init_device_mesh("cpu", (world_size,))
    rows_sharded = distribute_tensor(torch.randn(4, 6), mesh, [Shard(0)])
    with pytest.raises(InvalidValueError, match=r"placements.*Shard\(1\)"):
        fastgd.cross_entropy(rows_sharded, torch.tensor([0, 5, 2, 3]))
    logits = distribute_tensor(torch.randn(4, 6), mesh, [Shard(1)])
    with pytest.raises(TargetOutOfBoundsError, match="Target 6 is out of bounds"):
        fastgd.cross_entropy(logits, torch.tensor([0, 6, 2, 3]))  # 6 is past the whole vocabulary
    with pytest.raises(InvalidValueError, match=r"weight must have shape \(C,\) = \(6,\)"):
        fastgd.cross_entropy(logits, torch.tensor([0, 5, 2, 3]), weight=torch.ones(3))


def test_vocab_parallel_bad_input_is_refused_clearly():
    run_ranks(_bad_placements, 2)


def _linear_compare(rank, world_size, backend_name, n_classes, sequence_sharded) -> None:
    """linear_cross_entropy with the LM head's weight (and bias) sharded over the vocabulary,
    in chunks of 2 rows (several chunks per rank), against the unsharded head."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor, Shard, distribute_tensor

    import fastgd

    mesh = init_device_mesh("cpu", (world_size,))
    rtol, atol = VOCAB_PARALLEL[torch.float32]
    n_rows, hidden_size = 6, 4
    for index, case in enumerate(CASES):
        generator = torch.Generator().manual_seed(100 + index)
        kwargs = _case_kwargs(case, n_classes, generator)
        with_bias = index % 2 == 0  # with and without a bias, alternately
        target = _targets(n_rows, n_classes, generator, kwargs.get("ignore_index", -100))
        hidden = torch.randn(n_rows, hidden_size, generator=generator)
        head = torch.randn(n_classes, hidden_size, generator=generator)
        bias = torch.randn(n_classes, generator=generator) if with_bias else None
        whole = [t.clone().requires_grad_() for t in (hidden, head) + ((bias,) if with_bias else ())]
        sharded_hidden = (distribute_tensor(hidden, mesh, [Shard(0)]) if sequence_sharded
                          else hidden.clone()).requires_grad_()
        sharded = [distribute_tensor(t, mesh, [Shard(0)]).requires_grad_()
                   for t in (head,) + ((bias,) if with_bias else ())]
        with fastgd.force_backend(backend_name):
            ours = fastgd.linear_cross_entropy(
                sharded_hidden, sharded[0], target, linear_bias=(sharded[1:] or [None])[0],
                chunk_size=2, **kwargs)
            truth = fastgd.linear_cross_entropy(
                whole[0], whole[1], target, linear_bias=(whole[2:] or [None])[0], chunk_size=2,
                **kwargs)
        ours, truth = (out if isinstance(out, tuple) else (out,) for out in (ours, truth))
        for name, a, b in zip(("loss", "lse"), ours, truth):
            assert not isinstance(a, DTensor)
            torch.testing.assert_close(a, b, rtol=rtol, atol=atol, msg=f"{case}: {name}")
        sum((out.double() * (k + 1.5)).sum() for k, out in enumerate(ours)).backward()
        sum((out.double() * (k + 1.5)).sum() for k, out in enumerate(truth)).backward()
        grads = [sharded_hidden.grad] + [t.grad for t in sharded]
        for name, ours_grad, truth_t in zip(("hidden", "weight", "bias"), grads, whole):
            if isinstance(ours_grad, DTensor):
                assert name != "hidden" or sequence_sharded
                ours_grad = ours_grad.full_tensor()
            torch.testing.assert_close(ours_grad, truth_t.grad, rtol=rtol, atol=atol,
                                       msg=f"{case}: d {name}")


@pytest.mark.parametrize("backend_name", ["auto", "torch"])  # kernels (interpreted), torch path
def test_vocab_parallel_linear_cross_entropy_every_option_on_2_ranks(backend_name):
    run_ranks(_linear_compare, 2, backend_name, 37, False)


def test_vocab_parallel_linear_cross_entropy_sequence_sharded_empty_slice_on_4_ranks():
    # hidden states sharded over the sequence (gathered, their gradient scattered back) and a
    # rank holding no class of the 5
    run_ranks(_linear_compare, 4, "auto", 5, True)
