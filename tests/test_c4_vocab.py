"""The reduced LLM scale's data: a vocabulary trained on the sample's training documents
(`dataset.train_vocab`), and the eval tokens' unigram entropy the LLM tables print."""

from __future__ import annotations

import math

import pytest
import torch

from amm.data.c4 import C4Data, unigram_entropy


def sample(c4_files: dict[str, str], **kwargs: object) -> C4Data:
    args: dict[str, object] = dict(val_docs=100, seq_len=64, batch_size=4, eval_tokens=4096)
    return C4Data(**c4_files, **{**args, **kwargs})  # type: ignore[arg-type]


def test_a_trained_vocabulary_is_deterministic_and_keeps_eos(c4_files: dict[str, str]) -> None:
    first, second = sample(c4_files, train_vocab=512), sample(c4_files, train_vocab=512)
    assert len(first.tokenizer) == 512 and first.info["vocab_size"] == 512
    assert first.eos == first.tokenizer.convert_tokens_to_ids("</s>")  # documents still end
    a = torch.cat([b["input_ids"] for b in first.eval_batches()])
    b = torch.cat([b["input_ids"] for b in second.eval_batches()])
    assert torch.equal(a, b)  # the same vocabulary each time: runs are comparable
    assert 0 <= int(a.min()) and int(a.max()) < 512
    assert (a == first.eos).any()  # held-out documents are separated by EOS
    text = "The quick brown fox jumps over the lazy dog."
    ids = first.tokenizer(text, add_special_tokens=False)["input_ids"]
    assert first.tokenizer.decode(ids).strip() == text  # lossless, like the base tokenizer
    assert "BPE, 512 tokens" in first.info["tokenizer"]


def test_a_trained_vocabulary_needs_local_files(c4_files: dict[str, str]) -> None:
    with pytest.raises(
        ValueError, match="train_vocab .* needs local files: set dataset.data_files"
    ):
        C4Data(tokenizer=c4_files["tokenizer"], train_vocab=512)


def test_eval_unigram_entropy_is_the_eval_targets_own_entropy(c4_files: dict[str, str]) -> None:
    data = sample(c4_files)
    ids = torch.cat([b["input_ids"] for b in data.eval_batches()])
    counts = torch.bincount(ids[:, 1:].reshape(-1)).double()  # targets: every token but the first
    p = counts[counts > 0] / counts.sum()
    expected = float(-(p * p.log()).sum())
    assert data.info["eval_unigram_entropy"] == pytest.approx(expected, rel=1e-12)
    assert 4.0 < expected < math.log(len(data.tokenizer))  # far from uniform: real text
    assert unigram_entropy(torch.tensor([[3, 3, 3, 3]])) == 0.0  # one token: no uncertainty
    assert unigram_entropy(torch.tensor([[1, 2, 3, 4]])) == pytest.approx(math.log(4))
