"""The demo from start to end: check that the run fits in memory, load the corpus, check the
--out folder, train the fastgd run (and the torch run with ``--compare``), then write the metrics
and the plot, print the summary and a text sample."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch

import fastgd

from . import data, memory, parallel
from .config import Config, ConfigError, Diverged, with_overrides
from .metrics import write_csv
from .model import generate
from .plot import save_plot
from .recipe import STACKS
from .report import comparison_lines, make_reporter, max_curve_gap, summary_table
from .stop import StopRequest
from .train import resolve_device, run_dir, train


def run(cfg: Config, quiet: bool = False) -> int:
    """Exit status: 0 when done (early stop included), 128 + the signal's number when stopped by
    Ctrl-C (130) or SIGTERM (143). Raises :class:`Diverged` after writing the results of a run
    whose loss became nan or inf.

    With ``cfg.fsdp`` this is one process of a torchrun launch: it joins the process group for
    the run's duration, and only rank 0 prints and writes files."""
    if not cfg.fsdp:
        return _run(cfg, quiet, _device(cfg), None)
    parallel.check_launched()  # before anything else: the error says how to launch it
    device = parallel.device_for(_device(cfg).type)
    with parallel.process_group(device, cfg.batch_size) as group:
        return _run(cfg, quiet or not group.is_main, device, group)


def _run(cfg: Config, quiet: bool, device: torch.device,
         group: Optional[parallel.Parallel]) -> int:
    memory.check_fits(cfg, device)
    say = (lambda *a: None) if quiet else print
    corpus = data.load_corpus(cfg.data)
    data.check_fits(corpus, cfg.context)
    # after every check that can refuse: --overwrite deletes
    if group is None:
        _claim_out(cfg)
    else:
        group.main_then_agree(lambda: _claim_out(cfg))
    say(f"corpus: {corpus.description}")
    say(f"        {corpus.n_train_files} training files ({corpus.train.numel():,} bytes), "
        f"{corpus.n_val_files} held out for validation ({corpus.val.numel():,} bytes)")
    say(_setup_line(cfg, device))
    if group is not None:
        say(_fsdp_line(cfg, group))

    reporter = make_reporter(cfg.progress, quiet)
    stacks = ["fastgd", "torch"] if cfg.compare else ["fastgd"]
    resumable = _resumable(cfg, stacks)
    results = []
    stop = StopRequest()
    with stop.catching_signals():
        for stack in stacks:
            run_cfg = with_overrides(cfg, resume=stack in resumable)
            results.append(train(run_cfg, stack, corpus, device, reporter, stop, group))
            if results[-1].interrupted or results[-1].diverged:
                break

    out = Path(cfg.out)
    problem = None
    if group is None or group.is_main:  # the other ranks hold the same curves
        write_csv(out / "metrics.csv", [r.tracker for r in results])
        problem = save_plot(out / "demo.png", [r.tracker for r in results],
                            _title(cfg, device, results))
    say("")
    say(summary_table(results))
    if len(results) == 2:
        for line in comparison_lines(*results):
            say(line)
    saved = (f"{out}/<run>/best.pt, last.pt" if group is None
             else "none (--fsdp writes no checkpoints)")
    say(f"metrics: {out / 'metrics.csv'}   plot: {problem or out / 'demo.png'}   "
        f"checkpoints: {saved}")
    if results[-1].diverged:
        raise Diverged(results[-1].diverged)
    if results[-1].interrupted:
        say(f"interrupted at step {results[-1].steps_done}; " + (
            "checkpoint saved. Continue with the same command and --resume." if group is None
            else "--fsdp saved no checkpoint to continue from."))
        return stop.exit_status
    if cfg.sample_bytes:
        weights = "best checkpoint" if group is None else "last weights (--fsdp)"
        say(f"\n--- sample from the fastgd run's {weights} "
            "(the first line of held-out text as the prompt) ---")
        # every rank generates: each forward of the sharded model gathers its parameters
        say(_sample(results[0].model, corpus, cfg))
    return 0


def _run_files(out: Path) -> list[Path]:
    """What a run leaves in --out (the checkpoints of either stack, with or without --compare)."""
    return [out / "metrics.csv", out / "demo.png",
            *(out / stack / name for stack in STACKS for name in ("best.pt", "last.pt"))]


def _claim_out(cfg: Config) -> None:
    """A run never replaces an earlier one unasked: without --resume, an --out that holds a run
    is refused, or emptied of it with --overwrite."""
    if cfg.resume:
        return
    out = Path(cfg.out)
    found = [p for p in _run_files(out) if p.is_file()]
    if found and not cfg.overwrite:
        names = ", ".join(str(p.relative_to(out)) for p in found)
        raise ConfigError(f"--out {out} already holds a run ({names}); continue it with "
                          f"--resume, or pass --overwrite to replace it (or another --out)")
    for path in found:
        path.unlink()


def _resumable(cfg: Config, stacks: list[str]) -> set[str]:
    """With --resume, the runs that have a checkpoint: an interrupted --compare may not have
    started its torch run yet, which then starts from scratch."""
    if not cfg.resume:
        return set()
    found = {s for s in stacks if (run_dir(cfg, s) / "last.pt").is_file()}
    if not found:
        raise ConfigError(f"--resume: no checkpoint in {cfg.out}/{{{','.join(stacks)}}}/last.pt;"
                          f" run once without --resume first (or pass that run's --out)")
    return found


def _device(cfg: Config) -> torch.device:
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is available; use --device cpu")
    if cfg.backend == "interpret":
        return torch.device("cpu")
    return resolve_device(cfg.device)


def _setup_line(cfg: Config, device: torch.device) -> str:
    probe = torch.empty(0, device=device)
    if cfg.backend == "torch":
        which = "torch (forced)"
    else:
        which = fastgd.backend.backend_for(probe)
    hint = ""
    if which == "torch" and device.type == "cpu":
        hint = " (PyTorch path; --backend interpret runs the Triton kernels interpreted)"
    loss = "fastgd.linear_cross_entropy" if cfg.fused_linear else "fastgd.cross_entropy"
    return (f"device: {device}, fastgd backend: {which}{hint}\n"
            f"fastgd run: {loss} + fastgd.AdamW"
            f"{' (clipping fused)' if cfg.max_grad_norm else ''}; --compare run: "
            f"F.cross_entropy + torch.optim.AdamW\n"
            f"model: {cfg.layers} layers x {cfg.dim} wide, {cfg.heads} heads, context "
            f"{cfg.context}; {cfg.steps} steps ({cfg.warmup_steps} of warmup) x "
            f"{cfg.tokens_per_step:,} tokens "
            f"({cfg.batch_size} x {cfg.accum} x {cfg.context})")


def _fsdp_line(cfg: Config, group: parallel.Parallel) -> str:
    backend = "nccl" if group.device.type == "cuda" else "gloo"
    return (f"fsdp: {group.world_size} processes ({backend}), FSDP2 on each block and the "
            f"model; each trains on {cfg.batch_size // group.world_size} of the "
            f"{cfg.batch_size} sequences of each micro-batch")


def _title(cfg: Config, device: torch.device, results) -> str:
    where = cfg.data or "Python stdlib sample"
    title = (f"{where} | {cfg.layers}x{cfg.dim} GPT, {cfg.steps} steps x {cfg.tokens_per_step} "
             f"tokens, lr {cfg.lr:g}, seed {cfg.seed} | {device.type}, fastgd backend "
             f"{results[0].backend}")
    if len(results) == 2:
        gap = max_curve_gap(results[0].tracker, results[1].tracker)
        title += f"\nfastgd vs torch: largest difference between the logged losses {gap:.1e}"
    return title


def _sample(model, corpus: data.Corpus, cfg: Config) -> str:
    head = bytes(corpus.val[:200].tolist())
    prompt = head.split(b"\n")[0][:60] + b"\n" if b"\n" in head else head[:16]
    generator = torch.Generator().manual_seed(cfg.seed)
    text = generate(model, prompt, cfg.sample_bytes, temperature=0.8, generator=generator)
    return (prompt + text).decode("utf-8", errors="replace")


