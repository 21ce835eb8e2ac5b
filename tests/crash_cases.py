"""Inputs that would make a kernel read or write memory it does not own, run one after another in
a child process by ``test_bad_input.py`` (so that a crash fails that test instead of killing the
run): ``python crash_cases.py <kernels|torch> <device>``.

Each case prints one JSON line ``{"case", "error", "message"}`` (``error`` is None when nothing
was raised) after a ``{"start": case}`` line, so a crash shows which case it was.
"""
from __future__ import annotations

import contextlib
import json
import sys

import torch


def _stepped(device, n=10):
    import fastgd

    p = torch.nn.Parameter(torch.randn(n, device=device))
    p.grad = torch.randn(n, device=device)
    opt = fastgd.AdamW([p])
    opt.step()
    return p, opt


def _load_state_with(device, key: str, numel: int):
    """A state dict whose ``key`` moment has ``numel`` elements (its parameter has 10), then a
    step."""
    p, opt = _stepped(device)
    sd = opt.state_dict()
    sd["state"][0][key] = torch.zeros(numel)
    opt.load_state_dict(sd)
    opt.step()


def exp_avg_smaller_in_state_dict(device):
    _load_state_with(device, "exp_avg", 3)  # the kernel would read and write past its end


def exp_avg_larger_in_state_dict(device):
    _load_state_with(device, "exp_avg_sq", 4000)  # torch's ops would broadcast or fail later


def param_data_replaced_by_bigger(device):
    p, opt = _stepped(device)
    p.data = torch.randn(4000, device=device)
    p.grad = torch.randn(4000, device=device)
    opt.step()


def param_data_replaced_by_float64(device):
    p, opt = _stepped(device)
    p.data = p.data.double()
    p.grad = None
    p.grad = torch.randn(10, dtype=torch.float64, device=device)
    opt.step()


def grad_data_smaller(device):
    p, opt = _stepped(device)
    p.grad.data = torch.randn(3, device=device)
    opt.step()


def grad_data_float64(device):
    p, opt = _stepped(device)
    p.grad.data = p.grad.data.double()
    opt.step()


def state_replaced_after_step(device):
    p, opt = _stepped(device)
    opt.state[p]["exp_avg"] = torch.zeros(2, device=device)
    opt.step()


def state_storage_freed(device):
    p, opt = _stepped(device)
    opt.state[p]["exp_avg_sq"].untyped_storage().resize_(0)
    opt.step()


def found_inf_with_three_elements(device):
    p, opt = _stepped(device)
    opt.step(found_inf=torch.zeros(3, device=device))


def row_op_target_shorter_than_logits(device):
    logits = torch.randn(4, 50, device=device)
    torch.ops.fastgd.cross_entropy_rows(logits, torch.tensor([0, 1], device=device), None, -100,
                                        0.0, 1.0, 0.0, False)


def row_op_weight_shorter_than_classes(device):
    logits = torch.randn(4, 50, device=device)
    target = torch.tensor([0, 1, 2, 49], device=device)
    torch.ops.fastgd.cross_entropy_rows(logits, target, torch.ones(3, device=device), -100, 0.0,
                                        1.0, 0.0, False)


def inplace_backward_on_expanded_logits(device):
    import fastgd

    base = torch.randn(1, 50, device=device)
    logits = base.expand(4, 50).requires_grad_()
    fastgd.cross_entropy(logits, torch.tensor([0, 1, 2, 3], device=device),
                         inplace_backward=True).backward()


CASES = [exp_avg_smaller_in_state_dict, exp_avg_larger_in_state_dict,
         param_data_replaced_by_bigger, param_data_replaced_by_float64, grad_data_smaller,
         grad_data_float64, state_replaced_after_step, state_storage_freed,
         found_inf_with_three_elements, row_op_target_shorter_than_logits,
         row_op_weight_shorter_than_classes, inplace_backward_on_expanded_logits]


def main(path: str, device: str) -> None:
    import fastgd

    for case in CASES:
        print(json.dumps({"start": case.__name__}), flush=True)
        error = message = None
        with fastgd.force_backend("torch") if path == "torch" else contextlib.nullcontext():
            try:
                case(device)
            except Exception as exc:  # the point: which exception, and what it says
                error, message = [c.__name__ for c in type(exc).__mro__], str(exc)
        print(json.dumps({"case": case.__name__, "error": error, "message": message}), flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
