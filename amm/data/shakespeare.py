"""Character-level tiny Shakespeare (karpathy/char-rnn's ``input.txt``), as nanoGPT's
``shakespeare_char`` prepares it: the first 90 % of the characters train, the last 10 %
validate, and the vocabulary is the 65 distinct characters of the whole text, in sorted order.

Batches follow nanoGPT's ``get_batch``: ``batch_size`` windows at uniformly random offsets of
the training characters. A window holds ``seq_len + 1`` characters, so the model (which shifts
its labels: ``amm.models.llama.LlamaLM``) predicts ``seq_len`` next characters with contexts of
1 to ``seq_len``, exactly nanoGPT's ``x = data[i:i+T]``, ``y = data[i+1:i+1+T]``. An epoch is
``epoch_batches`` such batches drawn from a generator seeded by ``(seed, epoch)``, so a resumed
run (the trainer replays the epoch and skips what a checkpoint consumed) sees the same stream.

Evaluation: ``eval_tokens`` predictions of fixed, non-overlapping windows spread evenly over the
validation characters (nanoGPT averages ``eval_iters`` random batches instead; a fixed set
makes every evaluation of every run score the same characters).

The file is read from ``paths.data_dir``/tinyshakespeare/input.txt; a missing file is downloaded
once from char-rnn's repository (unless ``AMM_OFFLINE=1``), checked against its sha256.
"""

from __future__ import annotations

import hashlib
import urllib.error
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from amm.data.c4 import unigram_entropy
from amm.data.libsvm import download
from amm.paths import DATA_DIR_ENV, OFFLINE_ENV, DataNotFoundError, offline

URL = (
    "https://raw.githubusercontent.com/karpathy/char-rnn/"
    "6f9487a6fe5b420b7ca9afb0d7c078e37c1d1b4e/data/tinyshakespeare/input.txt"
)
SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
TRAIN_FRACTION = 0.9  # nanoGPT's data/shakespeare_char/prepare.py

Batch = dict[str, torch.Tensor]


def ensure_text(path: Path) -> Path:
    """``path``, downloading it first when it is missing and the network may be used."""
    if path.is_file():
        return path
    why = f"{OFFLINE_ENV} is set"
    if not offline():
        try:
            download(URL, path)
        except (OSError, urllib.error.URLError) as err:
            why = f"download failed: {err}"
        else:
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            if digest == SHA256:
                return path
            path.unlink()
            why = f"the download's sha256 is {digest}, not {SHA256}"
    raise DataNotFoundError(
        f"tiny Shakespeare not found at {path} ({why}).\n  Fetch it from {URL}\n"
        f"  and save it as {path}, or set {DATA_DIR_ENV} to a folder that holds "
        "tinyshakespeare/input.txt (the shared data folder has it)."
    )


class ShakespeareChar:
    """Random windows of the training characters: ``{"input_ids": LongTensor[B, T + 1]}``.

    Args:
        path: the text file (``input.txt``).
        seq_len: characters of context, nanoGPT's ``block_size`` (its CPU example: 64).
        batch_size: windows per step over all ranks (nanoGPT's CPU example: 12).
        epoch_batches: batches per epoch (an epoch is only a unit of the random stream); None:
            one pass worth of characters, ``len(train) // (batch_size * seq_len)``.
        eval_tokens: predictions to evaluate on (whole windows, whole batches).
        eval_batch_size: windows per evaluation batch.
        seed: base seed of the window offsets (the epoch is added to it).
    """

    def __init__(
        self,
        path: str,
        seq_len: int = 64,
        batch_size: int = 12,
        epoch_batches: int | None = None,
        eval_tokens: int = 32768,
        eval_batch_size: int = 64,
        seed: int = 0,
    ) -> None:
        if seq_len < 1 or batch_size < 1 or eval_batch_size < 1 or eval_tokens < seq_len:
            raise ValueError(
                "dataset: need seq_len, batch_size, eval_batch_size >= 1 and eval_tokens >= "
                f"seq_len; got {seq_len=}, {batch_size=}, {eval_batch_size=}, {eval_tokens=}"
            )
        self.path = ensure_text(Path(path).expanduser())
        text = self.path.read_text(encoding="utf-8")
        self.chars = sorted(set(text))
        index = {c: i for i, c in enumerate(self.chars)}
        data = torch.tensor([index[c] for c in text], dtype=torch.long)
        n_train = int(len(data) * TRAIN_FRACTION)
        self.train, self.val = data[:n_train], data[n_train:]
        self.seq_len, self.batch_size = int(seq_len), int(batch_size)
        self.epoch_batches = int(
            epoch_batches or max(1, len(self.train) // (self.batch_size * self.seq_len))
        )
        self.eval_tokens, self.eval_batch_size = int(eval_tokens), int(eval_batch_size)
        self.seed = int(seed)
        self._eval: list[Batch] | None = None
        self.info: dict[str, Any] = {
            "dataset": "shakespeare_char",
            "source": str(self.path),
            "vocab_size": len(self.chars),
            "tokenizer": f"characters ({len(self.chars)})",
            "seq_len": self.seq_len,
            "batch_size": self.batch_size,
            "tokens_per_step": self.batch_size * self.seq_len,  # predictions per step
            "n_train": len(self.train),
            "n_val": len(self.val),
        }

    def source_files(self) -> list[Path]:
        return [self.path]

    def train_batches(self, epoch: int, rank: int = 0, world_size: int = 1) -> Iterator[Batch]:
        """One epoch of this rank's ``batch_size // world_size`` windows per batch: the global
        batch is drawn once per step (the same generator on every rank), each rank takes its
        rows."""
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got {rank=}, {world_size=}")
        if self.batch_size % world_size:
            raise ValueError(f"batch_size={self.batch_size} is not divisible by {world_size=}")
        per_rank = self.batch_size // world_size
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        window = torch.arange(self.seq_len + 1)
        for _ in range(self.epoch_batches):
            starts = torch.randint(
                len(self.train) - self.seq_len, (self.batch_size,), generator=gen
            )
            mine = starts[rank * per_rank : (rank + 1) * per_rank]
            yield {"input_ids": self.train[mine[:, None] + window]}

    def eval_batches(self) -> list[Batch]:
        """``eval_tokens`` predictions: non-overlapping windows evenly spread over the
        validation characters (built once, kept)."""
        if self._eval is None:
            span = self.seq_len + 1
            available = len(self.val) // span
            windows = min(available, max(1, self.eval_tokens // self.seq_len))
            usable = max(windows // self.eval_batch_size, 1) * self.eval_batch_size
            if usable > available:
                raise ValueError(
                    f"dataset.eval_tokens={self.eval_tokens}: the validation split has only "
                    f"{available} windows of {span} characters; lower eval_batch_size"
                )
            starts = torch.linspace(0, len(self.val) - span, usable).long()
            ids = self.val[starts[:, None] + torch.arange(span)]
            self._eval = [{"input_ids": b} for b in ids.split(self.eval_batch_size)]
            self.info["eval_tokens"] = usable * self.seq_len
            self.info["eval_unigram_entropy"] = unigram_entropy(ids[:, 1:])
        return self._eval
