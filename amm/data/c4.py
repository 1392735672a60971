"""C4 English for the LLaMA pretraining experiments (paper sec. 4.3, app. E.3), as a data module.

Documents are streamed with Hugging Face ``datasets``: from the hub (``allenai/c4``, config
``en``; ``train`` and ``validation`` splits) or from local C4 ``json`` / ``json.gz`` files
(``data_files``: a path, a glob or a list; e.g. the shared 1,000-document sample). Nothing is
downloaded or tokenised ahead of time.

Packing, not truncation: each document is tokenised (no BOS), followed by EOS, the documents
are concatenated and the stream is cut into blocks of exactly ``seq_len`` tokens (the tail of
each tokenisation chunk that does not fill a block is dropped, as in ``transformers``'
``run_clm.py``). Every token of a batch is real text, so a step sees exactly
``batch_size * seq_len`` tokens (``info["tokens_per_step"]``) and the model needs no padding
or attention mask. GaLore's C4 loader truncates each document to 256 tokens and pads instead;
on the shared sample (median document: 279 LLaMA tokens) that would drop 63% of the tokens
and fill 22% of the block positions with padding.

Order: one epoch is one pass over the training documents. Its order is a pure function of
``(seed, epoch, rank, world_size)``: a seeded shuffle buffer over documents (which also shuffles
the hub's shards), then a seeded shuffle buffer over blocks (so that the blocks of one long
document do not fill a batch). The trainer resumes by replaying the current epoch and
skipping the batches a checkpoint had consumed, so a resumed run continues the same token
stream. Replaying re-tokenises the skipped documents (the trainer asks for whole batches, and
block boundaries depend on the token counts): about 1.5 s for the whole 1,000-document sample
here, i.e. about 0.4M tokens/s on one core, so 1,000 paper-scale batches (262M tokens) cost
about 11 core-minutes, divided between the ranks (each tokenises its own documents) and the
cores the fast tokenizer encodes a chunk on.

Distributed: ``datasets.distributed.split_dataset_by_node`` gives each rank a disjoint part of
the documents (whole shards when their number divides the world size, else every
``world_size``-th document); each rank packs its own documents into ``batch_size // world_size``
blocks per batch. Caveat: with finite local data and several ranks, the ranks may reach the
end of an epoch at different batches, and a resumed run puts every rank at rank 0's position
(the checkpoint's), which continues the same stream only on rank 0. The hub's training split
(365M documents) is never exhausted by these experiments.

Evaluation: the first ``eval_tokens`` tokens (whole blocks) of the validation documents, packed
the same way, in file order: the hub's ``validation`` split, local ``val_data_files``, or else
the first ``val_docs`` documents of ``data_files``, which training then skips.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from datasets import IterableDataset, load_dataset
from datasets.distributed import split_dataset_by_node
from transformers import AutoTokenizer, LlamaTokenizerFast, PreTrainedTokenizerBase

from amm.paths import DATA_DIR_ENV, OFFLINE_ENV, DataNotFoundError, offline

Batch = dict[str, torch.Tensor]
#: Documents tokenised per call: the fast tokenizer encodes a list on all cores.
TOKENIZE_CHUNK = 256


@functools.lru_cache(maxsize=4)  # building the fast tokenizer from a .model file takes ~1 s
def load_tokenizer(name_or_path: str) -> PreTrainedTokenizerBase:
    """A fast tokenizer from a SentencePiece ``.model`` file, a local folder or a hub name.

    LLaMA's ``tokenizer.model`` loads offline as ``LlamaTokenizerFast``; ``add_prefix_space``
    makes the converted tokenizer match SentencePiece itself (tests/test_llm.py checks this on
    the C4 sample). Other names (``t5-base``, GaLore's choice) go through ``AutoTokenizer``.
    """
    path = Path(name_or_path).expanduser()
    if path.suffix == ".model":
        if not path.is_file():
            raise DataNotFoundError(
                f"tokenizer file {path} not found. Set {DATA_DIR_ENV} to a folder holding "
                "tokenizer_llama2_32k/tokenizer.model (the shared data folder has it), or set "
                "dataset.tokenizer to another file, folder or hub name (e.g. t5-base)."
            )
        return LlamaTokenizerFast(vocab_file=str(path), add_prefix_space=True, legacy=True)
    if not path.exists() and offline():
        raise DataNotFoundError(
            f"tokenizer {name_or_path!r} is neither a local file nor folder, and {OFFLINE_ENV} "
            "is set, so it cannot be fetched from the hub."
        )
    try:
        return AutoTokenizer.from_pretrained(str(path) if path.exists() else name_or_path)
    except OSError as err:
        raise DataNotFoundError(
            f"could not load tokenizer {name_or_path!r} ({err}). Offline, point "
            "dataset.tokenizer at a local tokenizer.model file or folder."
        ) from err


def local_files(tokenizer: str, *patterns: str | list[str] | None) -> list[Path]:
    """The local files among a tokenizer name and ``data_files`` patterns (paths or globs)."""
    files = [Path(tokenizer).expanduser()] if Path(tokenizer).expanduser().is_file() else []
    for pattern in patterns:
        for item in [pattern] if isinstance(pattern, str) else list(pattern or []):
            path = Path(str(item)).expanduser()
            matches = [path] if path.is_file() else sorted(path.parent.glob(path.name))
            files += [m for m in matches if m.is_file()]
    return files


def unigram_entropy(targets: torch.Tensor) -> float:
    """Entropy (nats) of the tokens' own frequencies: the lowest mean loss any model that ignores
    the context reaches on them. A language model's eval loss under it shows it uses the context.
    (On a small eval set the plug-in estimate is biased low, so the reference is a strict one.)
    """
    counts = torch.bincount(targets.reshape(-1)).double()
    p = counts[counts > 0] / counts.sum()
    return float(-(p * p.log()).sum())


class C4Data:
    """Packed C4 token blocks: ``{"input_ids": LongTensor[batch, seq_len]}`` per batch.

    Args:
        tokenizer: SentencePiece ``.model`` file, tokenizer folder or hub name (``t5-base``).
        data_files: local C4 json/json.gz files (path, glob or list); None streams the hub.
        val_data_files: local validation files; None with ``data_files`` holds out the first
            ``val_docs`` documents of ``data_files`` instead.
        val_docs: documents held out for evaluation when there are no validation files
            (unused with the hub, which has a validation split).
        train_vocab: None keeps the tokenizer's vocabulary; a number trains a new one of that
            size on the training documents, with the tokenizer's own rules (the ``tokenizers``
            BPE trainer, deterministic). Small models learn a small vocabulary in far fewer
            tokens (the output layer is most of their compute): the reduced LLM scale uses it.
        seq_len: tokens per block (paper: 256).
        batch_size: blocks per step over all ranks (paper: 1024).
        eval_tokens: validation tokens to evaluate on (rounded down to whole eval batches).
        eval_batch_size: blocks per evaluation batch.
        seed: base seed of the shuffle buffers (the epoch is added to it).
        doc_buffer / block_buffer: shuffle buffer sizes (0: no shuffling, file order).
        hub_name / hub_config: the hub dataset.
    """

    def __init__(
        self,
        tokenizer: str,
        data_files: str | list[str] | None = None,
        val_data_files: str | list[str] | None = None,
        val_docs: int = 0,
        train_vocab: int | None = None,
        seq_len: int = 256,
        batch_size: int = 1024,
        eval_tokens: int = 10_000_000,
        eval_batch_size: int = 64,
        seed: int = 0,
        doc_buffer: int = 10_000,
        block_buffer: int = 2_000,
        hub_name: str = "allenai/c4",
        hub_config: str = "en",
    ) -> None:
        if seq_len < 2 or batch_size < 1 or eval_batch_size < 1:
            raise ValueError(
                f"need seq_len >= 2 and batch sizes >= 1, got {seq_len=}, {batch_size=}"
            )
        if train_vocab is not None and data_files is None:
            raise ValueError(
                "dataset.train_vocab trains a vocabulary on the training documents, which needs "
                "local files: set dataset.data_files (or use dataset=c4_sample); the hub's C4 is "
                "a stream without an end"
            )
        self.seq_len, self.batch_size = int(seq_len), int(batch_size)
        self.eval_tokens, self.eval_batch_size = int(eval_tokens), int(eval_batch_size)
        self.seed = int(seed)
        self.doc_buffer, self.block_buffer = int(doc_buffer), int(block_buffer)
        self.tokenizer = load_tokenizer(tokenizer)
        self._files = local_files(tokenizer, data_files, val_data_files)
        self.eos = self.tokenizer.eos_token_id
        if self.eos is None:
            raise ValueError(f"tokenizer {tokenizer!r} has no EOS token to separate documents")

        if data_files is None:
            self.source = f"{hub_name} ({hub_config}) from the Hugging Face hub"
            self.train_docs = self._open_hub(hub_name, hub_config, "train")
            self.val_docs = self._open_hub(hub_name, hub_config, "validation")
        else:
            self.source = str(data_files)
            docs = self._open_files(data_files)
            if val_data_files is not None:
                self.train_docs, self.val_docs = docs, self._open_files(val_data_files)
            else:
                if val_docs < 1:
                    raise ValueError("local data without val_data_files needs val_docs >= 1")
                self.train_docs, self.val_docs = docs.skip(val_docs), docs.take(val_docs)
        if train_vocab is not None:
            self.tokenizer = self.tokenizer.train_new_from_iterator(
                (doc["text"] for doc in self.train_docs), vocab_size=int(train_vocab)
            )
            self.eos = self.tokenizer.eos_token_id  # the special tokens carry over
        self._eval: list[Batch] | None = None

        self.info: dict[str, Any] = {
            "dataset": "c4",
            "source": self.source,
            "vocab_size": len(self.tokenizer),
            "tokenizer": (
                f"BPE, {len(self.tokenizer)} tokens trained on the training documents"
                if train_vocab is not None
                else str(tokenizer)
            ),
            "eos_token_id": self.eos,
            "seq_len": self.seq_len,
            "batch_size": self.batch_size,
            "tokens_per_step": self.batch_size * self.seq_len,
        }

    # ---- opening the documents -------------------------------------------------------------

    @staticmethod
    def _open_files(data_files: str | list[str]) -> IterableDataset:
        files = [data_files] if isinstance(data_files, str) else list(data_files)
        files = [str(Path(f).expanduser()) for f in files]
        try:
            ds = load_dataset("json", data_files=files, split="train", streaming=True)
        except FileNotFoundError as err:
            raise DataNotFoundError(
                f"C4 files not found: {files} ({err}). Set {DATA_DIR_ENV} to a folder holding "
                "c4_en_sample/ (the shared data folder has it), point dataset.data_files at "
                "local C4 json.gz files, or use dataset=c4 (streams allenai/c4 from the hub)."
            ) from err
        return ds.select_columns(["text"])

    @staticmethod
    def _open_hub(name: str, config: str, split: str) -> IterableDataset:
        hint = (
            "On an offline machine use dataset=c4_sample (the shared 1,000-document sample, "
            f"found through {DATA_DIR_ENV}) or set dataset.data_files to local C4 json.gz files."
        )
        if offline():
            raise DataNotFoundError(
                f"{OFFLINE_ENV} is set: cannot stream {name} from the hub. {hint}"
            )
        try:
            ds = load_dataset(name, config, split=split, streaming=True)
        except (OSError, ConnectionError, ValueError) as err:  # what offline hub access raises
            raise DataNotFoundError(
                f"could not open {name} ({config}) on the hub: {err}. {hint}"
            ) from err
        return ds.select_columns(["text"])

    # ---- tokenising and packing ------------------------------------------------------------

    def pack(self, chunk: dict[str, list[Any]]) -> dict[str, np.ndarray]:
        """A chunk of documents -> blocks of ``seq_len`` tokens (``datasets`` batched map)."""
        ids = self.tokenizer(chunk["text"], add_special_tokens=False)["input_ids"]
        flat = np.fromiter((t for doc in ids for t in (*doc, self.eos)), dtype=np.int64)
        n = len(flat) // self.seq_len
        return {"input_ids": flat[: n * self.seq_len].reshape(n, self.seq_len)}

    def _blocks(self, docs: IterableDataset) -> IterableDataset:
        return docs.map(self.pack, batched=True, batch_size=TOKENIZE_CHUNK, remove_columns=["text"])

    def rank_docs(self, epoch: int, rank: int = 0, world_size: int = 1) -> IterableDataset:
        """This rank's training documents of ``epoch``, in order."""
        docs = self.train_docs
        if self.doc_buffer:  # the same seed on every rank: split_dataset_by_node needs it
            docs = docs.shuffle(seed=self.seed + epoch, buffer_size=self.doc_buffer)
        return split_dataset_by_node(docs, rank=rank, world_size=world_size)

    def train_blocks(self, epoch: int, rank: int = 0, world_size: int = 1) -> IterableDataset:
        """This rank's token blocks of ``epoch``, in training order."""
        blocks = self._blocks(self.rank_docs(epoch, rank, world_size))
        if self.block_buffer:
            blocks = blocks.shuffle(seed=self.seed + epoch, buffer_size=self.block_buffer)
        return blocks

    # ---- the data module contract (docs/architecture.md section 2) -------------------------

    def source_files(self) -> list[Path]:
        """The local document files and the tokenizer file (none for the hub's stream)."""
        return list(self._files)

    def train_batches(self, epoch: int, rank: int = 0, world_size: int = 1) -> Iterator[Batch]:
        """One epoch of this rank's batches of ``batch_size // world_size`` blocks."""
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got {rank=}, {world_size=}")
        if self.batch_size % world_size:
            raise ValueError(f"batch_size={self.batch_size} is not divisible by {world_size=}")
        per_rank = self.batch_size // world_size
        blocks = self.train_blocks(epoch, rank, world_size)
        for batch in blocks.iter(batch_size=per_rank, drop_last_batch=True):
            yield {"input_ids": torch.from_numpy(np.array(batch["input_ids"], dtype=np.int64))}

    def eval_batches(self) -> list[Batch]:
        """The first ``eval_tokens`` validation tokens as whole batches (built once, kept)."""
        if self._eval is None:
            n_blocks = max(1, self.eval_tokens // self.seq_len)
            rows = [r["input_ids"] for r in self._blocks(self.val_docs).take(n_blocks)]
            if not rows:
                raise ValueError(f"no validation block of {self.seq_len} tokens in {self.source}")
            ids = torch.from_numpy(np.array(rows, dtype=np.int64))
            # whole batches only: the trainer averages batch means, which is then the token mean
            usable = max(len(ids) // self.eval_batch_size, 1) * self.eval_batch_size
            self._eval = [{"input_ids": b} for b in ids[:usable].split(self.eval_batch_size)]
            self.info["eval_tokens"] = sum(b["input_ids"].numel() for b in self._eval)
            self.info["eval_unigram_entropy"] = unigram_entropy(ids[:usable, 1:])
        return self._eval
