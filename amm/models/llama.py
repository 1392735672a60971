"""LLaMA decoder-only language models of the paper's C4 experiments (app. E.3).

``transformers``' ``LlamaForCausalLM`` built from a ``LlamaConfig`` with the paper's sizes
(the GaLore model family: configs/model/llama_*.yaml): RMSNorm, SiLU gated MLP, rotary
positions up to 1024, untied input and output embeddings (``tie_word_embeddings`` ties them,
as nanoGPT does: configs/model/llama_char.yaml), initializer range 0.02, SDPA
attention. Precision is the trainer's business (``trainer.dtype=bfloat16`` for bf16 weights,
``trainer.precision=bf16`` for autocast, ``trainer.compile`` for ``torch.compile``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM


def llama_config(
    hidden_size: int,
    intermediate_size: int,
    num_attention_heads: int,
    num_hidden_layers: int,
    vocab_size: int = 32000,
    max_position_embeddings: int = 1024,
    rms_norm_eps: float = 1e-6,
    initializer_range: float = 0.02,
    attn_implementation: str = "sdpa",
    tie_word_embeddings: bool = False,
) -> LlamaConfig:
    """The ``LlamaConfig`` of one model size (paper app. E.3)."""
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_attention_heads=num_attention_heads,
        num_hidden_layers=num_hidden_layers,
        max_position_embeddings=max_position_embeddings,
        rms_norm_eps=rms_norm_eps,
        initializer_range=initializer_range,
        hidden_act="silu",
        tie_word_embeddings=tie_word_embeddings,
        use_cache=False,
        attn_implementation=attn_implementation,
    )


class LlamaLM(nn.Module):
    """``forward({"input_ids": LongTensor[B, T]}) -> (mean next-token cross-entropy, {})``.

    Labels are the inputs; ``LlamaForCausalLM`` shifts them, so the loss is over the B (T - 1)
    next-token predictions of the packed blocks. ``vocab_size=None`` takes the tokenizer's size
    from ``info["vocab_size"]``. ``tf32`` lets CUDA run float32 matmuls and convolutions in TF32
    (the paper's "BF16 & TF32" mixed precision); it sets torch's global flags, so it affects
    the whole process, and does nothing on CPU. ``name`` is a label for tables and plots.
    """

    def __init__(
        self,
        info: Mapping[str, Any],
        hidden_size: int,
        intermediate_size: int,
        num_attention_heads: int,
        num_hidden_layers: int,
        vocab_size: int | None = None,
        max_position_embeddings: int = 1024,
        rms_norm_eps: float = 1e-6,
        initializer_range: float = 0.02,
        attn_implementation: str = "sdpa",
        tie_word_embeddings: bool = False,
        tf32: bool = True,
        name: str | None = None,
    ) -> None:
        super().__init__()
        self.name = name  # a label only (tables, plots)
        data_vocab = info.get("vocab_size")
        vocab = int(vocab_size or data_vocab or 0)
        if vocab < 1:
            raise ValueError("model.vocab_size is null and the data module gives no vocab_size")
        if data_vocab is not None and data_vocab > vocab:
            raise ValueError(
                f"model.vocab_size={vocab} is smaller than the tokenizer's {data_vocab} tokens"
            )
        seq_len = info.get("seq_len")
        if seq_len is not None and seq_len > max_position_embeddings:
            raise ValueError(f"seq_len={seq_len} exceeds {max_position_embeddings=}")
        if tf32:
            # matmuls only: cuDNN's convolutions use TF32 by default already, and its flag is
            # frozen in processes that imported torch's test utilities (disable_global_flags)
            torch.backends.cuda.matmul.allow_tf32 = True
        self.config = llama_config(
            hidden_size,
            intermediate_size,
            num_attention_heads,
            num_hidden_layers,
            vocab,
            max_position_embeddings,
            rms_norm_eps,
            initializer_range,
            attn_implementation,
            tie_word_embeddings,
        )
        self.lm = LlamaForCausalLM(self.config)

    def forward(self, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, Any]]:
        ids = batch["input_ids"]
        return self.lm(input_ids=ids, labels=ids).loss, {}
