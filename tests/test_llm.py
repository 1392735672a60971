"""The LLM track: LLaMA sizes, the C4 loader and tokenizer on the shared sample, a training
step of the 20M and 60M models on CPU, resuming the token stream, and the smoke reproduction
of Figure 5, the LLM table and Table 2."""

from __future__ import annotations

import gzip
import importlib
import json
import math
import subprocess
import sys
from itertools import islice
from pathlib import Path

import pytest
import sentencepiece
import torch
from hydra import initialize_config_dir
from hydra.utils import instantiate
from suite_helpers import compose_config, metrics, subprocess_env
from transformers import PreTrainedTokenizerBase

from amm.config import CONFIG_DIR
from amm.data.c4 import C4Data, load_tokenizer
from amm.data.libsvm import DataNotFoundError
from amm.models.llama import LlamaLM
from amm.optim import build_optimizer
from amm.trainer import batch_stream, train
from experiments import load_runs
from experiments.reproduce import expand_jobs, sweep_blocks

VOCAB = 32000
# name -> (hidden, intermediate, heads, layers, parameters with vocab 32000): paper app. E.3;
# the totals are GaLore's model family (untied embeddings and output layer).
SIZES = {
    "llama_20m": (256, 688, 4, 4, 19_548_416),
    "llama_60m": (512, 1376, 8, 8, 58_073_600),
    "llama_100m": (640, 1708, 10, 12, 99_989_120),
    "llama_350m": (1024, 2736, 16, 24, 367_969_280),
    "llama_1b": (2048, 5461, 32, 24, 1_339_082_752),
}


def galore_count(h: int, i: int, layers: int, vocab: int = VOCAB) -> int:
    """Embedding + output layer + per layer (q, k, v, o; gate, up, down; 2 RMSNorms) + final norm."""
    return 2 * vocab * h + layers * (4 * h * h + 3 * h * i + 2 * h) + h


@pytest.fixture(scope="module")
def sample_texts(c4_files: dict[str, str]) -> list[str]:
    with gzip.open(c4_files["data_files"], "rt") as fh:
        return [json.loads(line)["text"] for line in fh]


@pytest.fixture(scope="module")
def tokenizer(c4_files: dict[str, str]) -> PreTrainedTokenizerBase:
    return load_tokenizer(c4_files["tokenizer"])


def c4(c4_files: dict[str, str], **kwargs: object) -> C4Data:
    """The sample with short blocks (fast): 100 held-out documents, 900 for training."""
    args: dict[str, object] = dict(
        val_docs=100,
        seq_len=64,
        batch_size=8,
        eval_tokens=4096,
        eval_batch_size=16,
        block_buffer=256,
    )
    return C4Data(**c4_files, **{**args, **kwargs})  # type: ignore[arg-type]


# ---- models ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", SIZES)
def test_every_size_builds_with_the_galore_parameter_count(name: str) -> None:
    hidden, inter, heads, layers, expected = SIZES[name]
    cfg = compose_config([f"model={name}"]).model
    with torch.device("meta"):  # no memory even for 1B
        model = instantiate(cfg, info={"vocab_size": VOCAB, "seq_len": 256})
    n = sum(p.numel() for p in model.parameters())
    print(f"{name}: {n:,} parameters")
    assert n == expected == galore_count(hidden, inter, layers)
    c = model.lm.config
    assert (c.hidden_size, c.intermediate_size, c.num_attention_heads, c.num_hidden_layers) == (
        hidden,
        inter,
        heads,
        layers,
    )
    assert c.vocab_size == VOCAB and c.max_position_embeddings == 1024
    assert c.hidden_act == "silu" and c.initializer_range == 0.02 and not c.tie_word_embeddings
    assert model.lm.config._attn_implementation == "sdpa"


def test_model_checks_vocab_and_sequence_length() -> None:
    with torch.device("meta"):
        with pytest.raises(ValueError, match="smaller than the tokenizer"):
            LlamaLM({"vocab_size": 32100}, 64, 172, 2, 2, vocab_size=32000)
        with pytest.raises(ValueError, match="exceeds"):
            LlamaLM({"vocab_size": 100, "seq_len": 2048}, 64, 172, 2, 2)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["llama_20m", "llama_60m"])
def test_small_models_train_on_cpu(name: str, c4_files: dict[str, str]) -> None:
    """Forward is the next-token loss (about ln V at init); AM-AdamW steps lower it."""
    data = c4(c4_files, seq_len=32, batch_size=2)
    batch = next(iter(data.train_batches(0)))
    torch.manual_seed(0)
    model = instantiate(compose_config([f"model={name}"]).model, info=data.info)
    opt = build_optimizer(model, "am_adamw", lr=1e-3, weight_decay=1e-4, betas=[0.9, 0.99])
    losses = []
    for _ in range(3):
        opt.zero_grad()
        loss, metrics_ = model(batch)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert metrics_ == {}
    assert abs(losses[0] - math.log(VOCAB)) < 0.3
    assert losses[-1] < losses[0] - 0.1
    labels = batch["input_ids"][:, 1:]  # the HF loss is over the shifted targets
    with torch.no_grad():
        logits = model.lm(input_ids=batch["input_ids"]).logits[:, :-1]
        ref = torch.nn.functional.cross_entropy(logits.reshape(-1, VOCAB), labels.reshape(-1))
        assert torch.allclose(model(batch)[0], ref, atol=1e-5)


# ---- tokenizer and C4 loader on the real sample -------------------------------------------


def test_tokenizer_matches_sentencepiece(
    c4_files: dict[str, str], sample_texts: list[str], tokenizer: PreTrainedTokenizerBase
) -> None:
    sp = sentencepiece.SentencePieceProcessor(model_file=c4_files["tokenizer"])
    texts = sample_texts[:200]
    assert tokenizer(texts, add_special_tokens=False)["input_ids"] == sp.encode(texts)
    assert len(tokenizer) == VOCAB and tokenizer.eos_token_id == sp.eos_id() == 2


def test_blocks_pack_documents_with_eos(
    c4_files: dict[str, str], sample_texts: list[str], tokenizer: PreTrainedTokenizerBase
) -> None:
    """Without shuffling, the blocks are the training documents + EOS, concatenated and cut."""
    data = c4(c4_files, doc_buffer=0, block_buffer=0)
    assert data.info | {"source": None} == {
        "dataset": "c4",
        "source": None,
        "vocab_size": VOCAB,
        "tokenizer": c4_files["tokenizer"],  # the tokenizer file (or the trained vocabulary)
        "eos_token_id": 2,
        "seq_len": 64,
        "batch_size": 8,
        "tokens_per_step": 512,
    }
    batches = list(islice(data.train_batches(0), 20))
    assert all(
        b["input_ids"].shape == (8, 64) and b["input_ids"].dtype == torch.long for b in batches
    )
    stream = torch.cat([b["input_ids"].flatten() for b in batches]).tolist()
    expected: list[int] = []
    for doc in tokenizer(sample_texts[100:200], add_special_tokens=False)["input_ids"]:
        expected += [*doc, 2]
    assert stream == expected[: len(stream)]
    assert stream.count(2) >= 10  # documents are short: many EOS in 10k tokens


def test_epoch_blocks_are_in_range_and_cover_the_training_tokens(
    c4_files: dict[str, str], sample_texts: list[str], tokenizer: PreTrainedTokenizerBase
) -> None:
    data = c4(c4_files)
    ids = torch.cat([b["input_ids"] for b in data.train_batches(0)])
    assert ids.shape[1] == 64 and 0 <= ids.min() and ids.max() < VOCAB
    docs = tokenizer(sample_texts[100:], add_special_tokens=False)["input_ids"]
    n_tokens = sum(len(d) + 1 for d in docs)
    # one EOS per training document; lost: chunk tails (< 64 tokens per 256 documents) and the
    # last partial batch
    assert (ids == 2).sum() <= len(docs)
    assert n_tokens - 4 * 64 - 8 * 64 <= ids.numel() <= n_tokens


def test_train_and_validation_are_disjoint(
    c4_files: dict[str, str], sample_texts: list[str]
) -> None:
    data = c4(c4_files)
    val = [d["text"] for d in data.val_docs]
    train = [d["text"] for d in data.rank_docs(0)]
    assert val == sample_texts[:100] and sorted(train) == sorted(sample_texts[100:])
    eval_ids = torch.cat([b["input_ids"] for b in data.eval_batches()])
    assert eval_ids.shape == (64, 64) and data.info["eval_tokens"] == 4096
    train_blocks = {tuple(r) for b in data.train_batches(0) for r in b["input_ids"].tolist()}
    assert not train_blocks & {tuple(r) for r in eval_ids.tolist()}
    assert data.eval_batches() is data.eval_batches()  # built once


def test_order_is_a_deterministic_function_of_the_epoch(c4_files: dict[str, str]) -> None:
    def first(data: C4Data, epoch: int) -> list[torch.Tensor]:
        return [b["input_ids"] for b in islice(data.train_batches(epoch), 5)]

    a, b = c4(c4_files), c4(c4_files)  # b: a fresh instance, as after a restart
    assert all(torch.equal(x, y) for x, y in zip(first(a, 0), first(b, 0)))
    assert all(torch.equal(x, y) for x, y in zip(first(a, 1), first(b, 1)))
    assert not torch.equal(torch.stack(first(a, 0)), torch.stack(first(a, 1)))
    docs = [[d["text"] for d in islice(a.rank_docs(epoch), 5)] for epoch in (0, 1)]
    assert docs[0] != docs[1]  # the documents are reshuffled too, not only the blocks
    assert not torch.equal(torch.stack(first(a, 0)), torch.stack(first(c4(c4_files, seed=1), 0)))


def test_rank_shards_are_disjoint(c4_files: dict[str, str], sample_texts: list[str]) -> None:
    data = c4(c4_files)
    shards = [[d["text"] for d in data.rank_docs(3, rank, 2)] for rank in range(2)]
    assert not set(shards[0]) & set(shards[1])
    assert sorted(shards[0] + shards[1]) == sorted(sample_texts[100:])
    batch = next(iter(data.train_batches(3, rank=1, world_size=2)))
    assert batch["input_ids"].shape == (4, 64)  # half of the global batch
    with pytest.raises(ValueError, match="not divisible"):
        next(iter(data.train_batches(0, rank=0, world_size=3)))


def test_resumed_stream_continues_the_same_tokens(c4_files: dict[str, str]) -> None:
    """The trainer's resume (replay the epoch, skip consumed batches) across epoch ends."""
    small = {"val_docs": 990}  # 10 training documents: epochs of a few batches
    full = list(islice(batch_stream(c4(c4_files, **small), 0, 0, 0, 1), 30))
    assert full[-1][0] >= 2  # the stream crossed two epoch ends
    for k in (3, 17):
        epoch, index, _ = full[k]
        resumed = batch_stream(c4(c4_files, **small), epoch, index, 0, 1)  # a fresh instance
        for (e1, i1, b1), (e2, i2, b2) in zip(full[k:], resumed):
            assert (e1, i1) == (e2, i2) and torch.equal(b1["input_ids"], b2["input_ids"])


def test_missing_files_and_offline_hub_give_clear_errors(
    c4_files: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AMM_OFFLINE", "1")
    with pytest.raises(DataNotFoundError, match="dataset=c4_sample"):
        C4Data(tokenizer=c4_files["tokenizer"])
    with pytest.raises(DataNotFoundError, match="AMM_DATA_DIR"):
        C4Data(
            data_files=str(tmp_path / "none.json.gz"), val_docs=1, tokenizer=c4_files["tokenizer"]
        )
    with pytest.raises(DataNotFoundError, match="tokenizer_llama2_32k"):
        load_tokenizer(str(tmp_path / "tokenizer.model"))
    with pytest.raises(DataNotFoundError, match="AMM_OFFLINE"):
        load_tokenizer("t5-base")


# ---- trainer and reproduction ----------------------------------------------------------------

RUN = [
    "experiment=figure5",
    "scale=smoke",
    "model=llama_4m",
    "optimizer=am_adamw",
    "trainer.scheduler.name=constant",
    "trainer.eval_every=3",
    "trainer.progress=false",
    "logger=none",
]


@pytest.fixture
def data_dir_env(
    shared_data: Path, c4_files: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> Path:
    monkeypatch.setenv("AMM_DATA_DIR", str(shared_data))
    monkeypatch.setenv("AMM_OFFLINE", "1")
    return shared_data


@pytest.mark.slow
@pytest.mark.parametrize("accumulate", [1, 3])
def test_run_stopped_by_max_steps_then_extended_matches_uninterrupted(
    tmp_path: Path, data_dir_env: Path, accumulate: int
) -> None:
    """Resuming continues the token stream where the checkpoint left it, also when each step
    takes several batches (accumulation)."""
    run = [*RUN, f"trainer.accumulate_grad_batches={accumulate}"]
    reference = train(compose_config([*run, "trainer.max_steps=9"]), tmp_path / "reference")
    run_dir = tmp_path / "extended"
    train(compose_config([*run, "trainer.max_steps=6"]), run_dir)
    (run_dir / "summary.json").unlink()  # finished runs are skipped; this one is extended
    extended = train(compose_config([*run, "trainer.max_steps=9"]), run_dir)
    assert metrics(run_dir) == metrics(tmp_path / "reference")
    assert [r["step"] for r in metrics(run_dir)] == list(range(1, 10))
    assert extended["loss"] == reference["loss"] and extended["eval_loss"] == reference["eval_loss"]


# AM-SGD without clipping: its step scales with the gradient (AM-AdamW's hardly does)
AM_SGD_RUN = [
    *(o for o in RUN if not o.startswith(("experiment", "optimizer"))),
    "dataset=c4_sample",
    "dataset.seq_len=32",
    "dataset.eval_tokens=128",
    "optimizer=am_sgd",
    "optimizer.lr=0.5",
]


@pytest.mark.slow
@pytest.mark.parametrize("run", [RUN, AM_SGD_RUN], ids=["am_adamw", "am_sgd"])
def test_accumulated_micro_batches_equal_one_large_batch(
    tmp_path: Path, data_dir_env: Path, run: list[str]
) -> None:
    """trainer.accumulate_grad_batches=2 at batch 2 takes the updates of batch 4: the stream is
    the same blocks in the same order, and the losses are weighted 1/2."""
    large = [*run, "trainer.max_steps=4", "dataset.batch_size=4"]
    train(compose_config(large), tmp_path / "large")
    accumulated = [*large, "dataset.batch_size=2", "trainer.accumulate_grad_batches=2"]
    train(compose_config(accumulated), tmp_path / "accumulated")
    expected, got = metrics(tmp_path / "large"), metrics(tmp_path / "accumulated")
    assert [r["step"] for r in got] == [1, 2, 3, 4]
    for a, b in zip(expected, got, strict=True):
        for key in ("loss", "beta", "eval_loss"):
            assert (key in a) == (key in b)
            if key in a:
                assert b[key] == pytest.approx(a[key], rel=1e-4), (a["step"], key)
    # and not the run of batch 2 without accumulation
    train(compose_config([*large, "dataset.batch_size=2"]), tmp_path / "small")
    small = [r["loss"] for r in metrics(tmp_path / "small")]
    assert small != pytest.approx([r["loss"] for r in got], rel=1e-3)


def reproduce(artifact: str, cwd: Path, shared_data: Path, *extra: str) -> str:
    cmd = [sys.executable, "-m", "experiments.reproduce", artifact, "--scale", "smoke", *extra]
    env = subprocess_env(cwd, AMM_DATA_DIR=str(shared_data))
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


@pytest.mark.slow
def test_figure5_then_table_llm_and_table2_from_its_runs(
    tmp_path: Path, c4_files: dict[str, str], shared_data: Path
) -> None:
    reproduce("figure5", tmp_path, shared_data)
    out = tmp_path / "results" / "figure5" / "smoke"
    png = out / "figure5.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert (out / "figure5.pdf").stat().st_size > 1_000
    main, paired = (out / "table.md").read_text().split("Paired differences")
    rows = [line for line in main.splitlines() if line.startswith("| 4M")]
    assert len(rows) == 4  # AdamW / AM-AdamW x warmup / none
    assert len([line for line in paired.splitlines() if line.startswith("| 4M")]) == 2
    assert "Unigram entropy of the eval tokens: " in main
    run_dirs = json.loads((out / "provenance.json").read_text())["run_dirs"]
    assert len(run_dirs) == 4

    # The tables read Figure 5's finished runs: nothing is trained again.
    before = {d: (tmp_path / d / "metrics.jsonl").stat().st_mtime_ns for d in run_dirs}
    for artifact in ("table_llm", "table2"):
        printed = reproduce(artifact, tmp_path, shared_data, "hydra.sweep.dir=runs/figure5/smoke")
        # one block per method (AdamW, AM-AdamW), 2 runs each: all 4 runs skipped
        assert printed.count("all 2 runs finished already") == 2
        prov = json.loads(
            (tmp_path / "results" / artifact / "smoke" / "provenance.json").read_text()
        )
        assert prov["run_dirs"] == run_dirs
    assert {d: (tmp_path / d / "metrics.jsonl").stat().st_mtime_ns for d in run_dirs} == before
    assert not (tmp_path / "runs" / "table2").exists()

    table = (tmp_path / "results" / "table_llm" / "smoke" / "table_llm.md").read_text()
    (row,) = [line for line in table.split("Paired")[0].splitlines() if line.startswith("| 4M")]
    cells = [c.strip() for c in row.strip("|").split("|")][1:]
    assert len(cells) == 4
    for cell in cells:  # "perplexity / loss (n=1)": exp(loss), below the vocabulary size
        ppl, loss = cell.removesuffix(" (n=1)").split(" / ")
        assert math.isclose(float(ppl), math.exp(float(loss)), rel_tol=2e-3) and float(ppl) < VOCAB

    table2 = (tmp_path / "results" / "table2" / "smoke" / "table2.md").read_text()
    rows = [line.split("|")[1:-1] for line in table2.splitlines() if line.startswith("| 4M")]
    assert [r[1].strip() for r in rows] == ["warmup 2", "no warmup"]
    for r in rows:  # one seed: "value (n=1)", the overhead "+x.x (n=1, no interval)"
        t_adamw, t_am = float(r[2].split()[0]), float(r[3].split()[0])
        assert t_adamw > 0 and t_am > 0
        # the times are printed in ms rounded to 0.01: the overhead must lie in the range they allow
        half = 5e-3
        low = 100 * ((t_am - half) / (t_adamw + half) - 1) - 0.05
        high = 100 * ((t_am + half) / (t_adamw - half) - 1) + 0.05
        assert low <= float(r[4].split()[0]) <= high


@pytest.mark.slow
@pytest.mark.parametrize("artifact", ["table5", "table6"])
def test_table5_and_table6_from_their_smoke_jobs(
    artifact: str, tmp_path: Path, data_dir_env: Path
) -> None:
    """Each job of the smoke sweep (shortened to 3 steps) trains; the table names every method."""
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        blocks = sweep_blocks(artifact, "smoke")
    base = [f"experiment={artifact}", "scale=smoke"]
    jobs = [job for b in blocks for job in expand_jobs([*base, *b])]
    run_dirs = []
    for i, job in enumerate(jobs):
        overrides = [*job, "trainer.max_steps=3", "trainer.progress=false", "logger=none"]
        train(compose_config(overrides), tmp_path / f"run{i}")
        run_dirs.append(tmp_path / f"run{i}")
    importlib.import_module(f"experiments.{artifact}").make(run_dirs, tmp_path, "smoke")
    table = (tmp_path / f"{artifact}.md").read_text()
    if artifact == "table5":  # 2 scopes x 2 schedules, one cell each
        names = ("Shared (global β)", "Per-layer (β per tensor)")
        rows = {
            r.split("|")[1].strip(): r.split("|")[2:-1]
            for r in table.splitlines()
            if r.startswith(tuple(f"| {n} |" for n in names))
        }
        assert set(rows) == set(names)
        assert all(len(cells) == 2 and "–" not in "".join(cells) for cells in rows.values())
        assert table.count("| per-layer − shared, eval loss (paired) |") == 1
    else:
        names = ["AdamW", "AM-AdamW", "AM-AdamW (Clip, β≥0.5)", "AM-AdamW (Restart, β<0.5)"]
        for name in names:  # one seed: "loss (n=1)"
            row = next(r for r in table.splitlines() if r.startswith(f"| {name} |"))
            assert math.isfinite(float(row.split("|")[2].split()[0]))
        for name in names[2:]:  # each variant against AM-AdamW and AdamW
            assert f"| {name} − AM-AdamW |" in table and f"| {name} − AdamW |" in table
        (clip,) = [r for r in load_runs(run_dirs) if r.cfg.optimizer.get("beta_min") == 0.5]
        # the bounded form reports a beta at every step, beta_1 = beta_max included
        steps, betas = clip.betas()
        assert steps.tolist() == [1, 2, 3] and min(betas) >= 0.5 - 1e-6
