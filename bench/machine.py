"""What a run happens on: device, GPU name, versions, commit, date. Every result row carries it,
so a figure can always be traced to the machine and the code that produced it."""
from __future__ import annotations

import dataclasses
import datetime
import platform
import re
import subprocess
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent


@dataclasses.dataclass(frozen=True)
class Machine:
    device: str  # "cuda" or "cpu"
    gpu: str  # the GPU's name, or "none"
    torch: str
    triton: str
    python: str
    commit: str  # short hash, "+dirty" when the working tree differs from it
    date: str  # UTC, ISO 8601

    @property
    def has_gpu(self) -> bool:
        return self.device == "cuda"

    def slug(self) -> str:
        """A folder name: GPU, date and commit (``nvidia-h200_2026-11-28_abc1234``)."""
        gpu = re.sub(r"[^a-z0-9]+", "-", self.gpu.lower()).strip("-") or "cpu"
        return f"{gpu if self.has_gpu else 'cpu'}_{self.date[:10]}_{self.commit.replace('+', '-')}"


def current() -> Machine:
    has_gpu = torch.cuda.is_available()
    return Machine(
        device="cuda" if has_gpu else "cpu",
        gpu=torch.cuda.get_device_name() if has_gpu else "none",
        torch=torch.__version__,
        triton=_triton_version(),
        python=platform.python_version(),
        commit=_commit(),
        date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    )


def l2_bytes() -> int:
    """The GPU's L2 size (inputs smaller than a few of these are rotated); 0 on the CPU."""
    if not torch.cuda.is_available():
        return 0
    return int(getattr(torch.cuda.get_device_properties(0), "L2_cache_size", 0))


def _triton_version() -> str:
    try:
        import triton

        return triton.__version__
    except ImportError:  # pragma: no cover - triton is Linux-only
        return "none"


def _commit() -> str:
    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True)

    try:
        head = git("rev-parse", "--short", "HEAD")
        if head.returncode != 0:
            return "unknown"
        dirty = git("diff", "--quiet", "HEAD", "--", "fastgd", "kernels", "bench").returncode != 0
    except OSError:  # no git on the machine
        return "unknown"
    return head.stdout.strip() + ("+dirty" if dirty else "")
