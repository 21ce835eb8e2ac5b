"""torch.compile of a whole training step -- forward, fastgd's loss, backward, ``opt.step()`` --
gives the eager step's numbers on each backend: the losses are custom ops the compiler traces,
the optimizer step is a clean graph break (it runs eagerly). ``fullgraph=True`` around the step
raises a message that says what to do; torch.func's gradient transforms and second derivatives
are refused with fastgd's own messages.

Runs on the session's path (interpreted kernels without CUDA) and on the PyTorch path.
"""
from __future__ import annotations

import pytest
import torch

import fastgd
from tolerances import SAME_PRECISION

RTOL, ATOL = SAME_PRECISION[torch.float32]
STEPS = 3


def _train(compiled_with, loss_name: str) -> list:
    torch.manual_seed(0)
    # 13 classes, 10 rows: no multiple of a tile or chunk
    body, head = torch.nn.Linear(6, 8), torch.nn.Linear(8, 13, bias=False)
    params = [*body.parameters(), *head.parameters()]
    opt = fastgd.AdamW(params, lr=1e-2, max_grad_norm=0.5)
    x = torch.randn(10, 6)
    y = torch.randint(0, 13, (10,))

    def step():
        hidden = torch.tanh(body(x))
        if loss_name == "cross_entropy":
            loss = fastgd.cross_entropy(head(hidden), y, label_smoothing=0.1, z_loss=1e-3)
        else:
            loss = fastgd.linear_cross_entropy(hidden, head.weight, y, z_loss=1e-3,
                                               chunk_size=4)
        loss.backward()
        opt.step()
        opt.zero_grad()
        return loss.detach()

    if compiled_with is not None:
        torch._dynamo.reset()
        step = torch.compile(step, backend=compiled_with)
    losses = [step() for _ in range(STEPS)]
    return losses + [p.detach().clone() for p in params]


@pytest.mark.parametrize("loss_name", ["cross_entropy", "linear_cross_entropy"])
@pytest.mark.parametrize("compile_backend", ["aot_eager", "inductor"])
def test_compiled_training_step_matches_eager(compile_backend, loss_name):
    eager = _train(None, loss_name)
    compiled = _train(compile_backend, loss_name)
    for index, (a, b) in enumerate(zip(compiled, eager)):
        torch.testing.assert_close(a, b, rtol=RTOL, atol=ATOL, msg=f"{loss_name} item {index}")


def test_compiled_training_step_on_the_pytorch_path():
    with fastgd.force_backend("torch"):
        eager = _train(None, "cross_entropy")
        compiled = _train("aot_eager", "cross_entropy")
    for a, b in zip(compiled, eager):
        torch.testing.assert_close(a, b, rtol=RTOL, atol=ATOL)


def test_fullgraph_around_the_step_says_what_to_do():
    model = torch.nn.Linear(4, 3)
    opt = fastgd.AdamW(model.parameters())
    model(torch.randn(2, 4)).sum().backward()
    torch._dynamo.reset()
    with pytest.raises(Exception, match="torch.compiler.disable") as info:
        torch.compile(lambda: opt.step(), fullgraph=True)()
    if "reason" in str(info.value):  # torch versions whose disable() takes a reason show ours
        assert "outside the fullgraph=True region" in str(info.value)


def test_gradient_transforms_are_refused_clearly():
    x = torch.randn(4, 7)
    t = torch.randint(0, 7, (4,))
    with pytest.raises(TypeError, match="torch.func's gradient transforms"):
        torch.func.grad(lambda z: fastgd.cross_entropy(z, t))(x)
    with pytest.raises(TypeError, match="torch.func's gradient transforms"):
        torch.func.grad(lambda w: fastgd.linear_cross_entropy(x, w, t))(torch.randn(9, 7))
    # vmap alone is not a gradient transform: it runs (torch's batching fallback)
    batched = torch.vmap(lambda z: fastgd.cross_entropy(z, t))(x[None])
    torch.testing.assert_close(batched[0], fastgd.cross_entropy(x, t), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("loss_name", ["cross_entropy", "linear_cross_entropy"])
def test_second_derivatives_are_refused_clearly_after_a_working_first(loss_name):
    x = torch.randn(4, 7, requires_grad=True)
    t = torch.randint(0, 7, (4,))
    if loss_name == "cross_entropy":
        loss = fastgd.cross_entropy(x, t)
    else:
        loss = fastgd.linear_cross_entropy(x, torch.randn(9, 7), t)
    (first,) = torch.autograd.grad(loss, x, create_graph=True)
    expected = torch.autograd.grad(loss, x, retain_graph=True)[0]
    torch.testing.assert_close(first, expected)  # the first derivative is the usual one
    with pytest.raises(TypeError, match="no second derivative"):
        first.sum().backward()
