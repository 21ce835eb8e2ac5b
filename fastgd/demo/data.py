"""The demo's corpus: bytes of text files, split into training and validation *by file*, and the
batches drawn from them.

The default corpus is a deterministic sample of the running Python's standard library sources,
which every machine that runs this demo has, so nothing is downloaded. The model is byte-level:
every byte is a token (vocabulary of 256).
"""
from __future__ import annotations

import sysconfig
import zlib
from dataclasses import dataclass
from pathlib import Path

import torch

from .config import ConfigError

VOCAB_SIZE = 256
STDLIB_BUDGET_BYTES = 3_000_000  # enough that the default run sees each byte less than once
MAX_FILE_BYTES = 200_000  # a few huge generated files would dominate the sample
VALIDATION_EVERY = 10  # about one file in ten is held out
SEPARATOR = b"\n\n"


class DataError(ConfigError):
    """The corpus cannot feed the requested configuration (the CLI prints it as one line)."""


@dataclass
class Corpus:
    train: torch.Tensor  # uint8 bytes of the training files, concatenated
    val: torch.Tensor  # uint8 bytes of the held-out files
    description: str  # one line: where the text came from
    n_train_files: int
    n_val_files: int


def load_corpus(path: str | None) -> Corpus:
    """The stdlib sample when ``path`` is None, else every text file under ``path``.

    A single file cannot be split by file: its last tenth is held out instead."""
    if path is None:
        root = Path(sysconfig.get_paths()["stdlib"])
        files = _stdlib_sample(root)
        where = f"Python standard library sample ({root})"
    else:
        root = Path(path)
        if not root.exists():
            raise DataError(f"--data {path}: no such file or folder")
        if root.is_file():
            return _single_file_corpus(root)
        files = sorted(p for p in root.rglob("*") if p.is_file())
        where = f"{root}"
    texts = [(f, b) for f in files if (b := _read_text(f)) is not None]
    if not texts:
        raise DataError(f"--data {path}: no readable text files found (UTF-8, no NUL bytes)")
    val = [b for f, b in texts if _is_validation(f.relative_to(root))]
    train = [b for f, b in texts if not _is_validation(f.relative_to(root))]
    if len(texts) == 1:
        return _split_one_text(texts[0][1], f"{where}: 1 file")
    if not val or not train:  # too few files for the hash split: hold out the last one
        train, val = [b for _, b in texts[:-1]], [texts[-1][1]]
    n_bytes = sum(len(b) for b in train) + sum(len(b) for b in val)
    return Corpus(_join(train), _join(val), f"{where}: {len(texts)} files, {n_bytes:,} bytes",
                  len(train), len(val))


def _stdlib_sample(root: Path) -> list[Path]:
    """Files in a stable pseudo-random order (by a hash of their relative path), skipping
    third-party packages, taken until the byte budget is spent."""
    candidates = [p for p in root.rglob("*.py") if "site-packages" not in p.parts]
    candidates.sort(key=lambda p: (_stable_hash(p.relative_to(root)), str(p)))
    chosen, total = [], 0
    for p in candidates:
        size = p.stat().st_size
        if 0 < size <= MAX_FILE_BYTES:
            chosen.append(p)
            total += size
            if total >= STDLIB_BUDGET_BYTES:
                break
    return sorted(chosen)


def _single_file_corpus(path: Path) -> Corpus:
    data = _read_text(path)
    if data is None:
        raise DataError(f"--data {path}: not a text file (UTF-8 without NUL bytes expected)")
    return _split_one_text(data, str(path))


def _split_one_text(data: bytes, where: str) -> Corpus:
    cut = len(data) - len(data) // VALIDATION_EVERY
    return Corpus(_as_tensor(data[:cut]), _as_tensor(data[cut:]),
                  f"{where}: {len(data):,} bytes, last tenth held out", 1, 1)


def _read_text(path: Path) -> bytes | None:
    try:
        data = path.read_bytes()
        data.decode("utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    return data if data and b"\0" not in data else None


def _stable_hash(relative: Path) -> int:
    return zlib.crc32(relative.as_posix().encode())


def _is_validation(relative: Path) -> bool:
    return _stable_hash(relative) % VALIDATION_EVERY == 0


def _join(parts: list[bytes]) -> torch.Tensor:
    return _as_tensor(SEPARATOR.join(parts))


def _as_tensor(data: bytes) -> torch.Tensor:
    if not data:  # frombuffer refuses empty buffers
        return torch.empty(0, dtype=torch.uint8)
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def check_fits(corpus: Corpus, context: int) -> None:
    """Both splits must hold at least one window of ``context + 1`` bytes (inputs + next byte)."""
    need = context + 1
    for name, split in (("training", corpus.train), ("validation", corpus.val)):
        if split.numel() < need:
            raise DataError(
                f"corpus too small: the {name} split has {split.numel()} bytes but one sequence "
                f"needs --context + 1 = {need}; give more text with --data or lower --context")


def windows(tokens: torch.Tensor, starts: torch.Tensor, context: int):
    """Inputs ``x`` and next-byte targets ``y`` (both ``(len(starts), context)``, int64)."""
    index = starts[:, None] + torch.arange(context + 1)
    seq = tokens[index].long()
    return seq[:, :-1], seq[:, 1:]


def train_batch(tokens: torch.Tensor, step: int, seed: int, n_sequences: int, context: int):
    """The sequences of optimizer step ``step``: random windows drawn from a generator seeded by
    ``(seed, step)``, so a resumed run sees exactly the batches of an uninterrupted one."""
    # torch takes seeds in [0, 2**64); below that the modulo changes nothing.
    generator = torch.Generator().manual_seed((seed * 1_000_003 + step) % 2**64)
    starts = torch.randint(0, tokens.numel() - context, (n_sequences,), generator=generator)
    return windows(tokens, starts, context)


def eval_starts(tokens: torch.Tensor, n_sequences: int, context: int) -> torch.Tensor:
    """Fixed, evenly spaced validation windows (the same at every evaluation and in every run)."""
    last = tokens.numel() - context - 1
    n = max(1, min(n_sequences, last + 1))
    return torch.linspace(0, last, n).long()

