"""The AM optimizers inside other people's training code: transformers' Trainer, torch's
swa_utils (EMA/SWA), torch.compile. Each test runs the real library."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from optim_classes import AM_OPTIMIZERS
from torch import nn
from torch.optim import swa_utils
from torch.optim.lr_scheduler import LambdaLR

from amm.optim import AMAdamW

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")  # the Trainer needs it

SEQ, VOCAB, STEPS, WARMUP = 16, 64, 6, 3


def _tiny_llama() -> nn.Module:
    config = transformers.LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=SEQ,
    )
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(config)


class _Tokens(torch.utils.data.Dataset):
    """One fixed sequence: every step sees the same batch, in any sampler order."""

    def __init__(self) -> None:
        self.ids = torch.randint(0, VOCAB, (SEQ,), generator=torch.Generator().manual_seed(1))

    def __len__(self) -> int:
        return 1

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids, "labels": self.ids}


def _optimizer(model: nn.Module) -> tuple[AMAdamW, LambdaLR]:
    opt = AMAdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    return opt, transformers.get_linear_schedule_with_warmup(opt, WARMUP, STEPS)


class _Betas(transformers.TrainerCallback):
    def __init__(self, opt: AMAdamW) -> None:
        self.opt, self.betas = opt, []

    def on_step_end(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
        beta = self.opt.last_beta
        self.betas.append(None if beta is None else beta.item())


def _trainer(model: nn.Module, out: Path, callback: _Betas, **kwargs) -> transformers.Trainer:
    args = transformers.TrainingArguments(
        output_dir=str(out),
        per_device_train_batch_size=1,
        max_steps=STEPS,
        max_grad_norm=0.0,  # no clipping: the direct loop has none
        use_cpu=True,
        report_to=[],
        disable_tqdm=True,
        logging_strategy="no",
        save_strategy="steps",
        save_steps=WARMUP,
        seed=0,
        **kwargs,
    )
    opt, scheduler = callback.opt, _scheduler_of(callback.opt)
    return transformers.Trainer(
        model=model,
        args=args,
        train_dataset=_Tokens(),
        optimizers=(opt, scheduler),
        callbacks=[callback],
    )


_SCHEDULERS: dict[int, LambdaLR] = {}


def _scheduler_of(opt: AMAdamW) -> LambdaLR:
    return _SCHEDULERS[id(opt)]


def _make(model: nn.Module) -> _Betas:
    opt, scheduler = _optimizer(model)
    _SCHEDULERS[id(opt)] = scheduler
    return _Betas(opt)


def _direct_loop() -> tuple[nn.Module, list[float | None]]:
    model = _tiny_llama()
    opt, scheduler = _optimizer(model)
    batch = _Tokens()[0]
    betas = []
    for _ in range(STEPS):
        loss = model(input_ids=batch["input_ids"][None], labels=batch["labels"][None]).loss
        loss.backward()
        opt.step()
        scheduler.step()
        opt.zero_grad()
        betas.append(None if opt.last_beta is None else opt.last_beta.item())
    return model, betas


@pytest.mark.slow
def test_transformers_trainer_with_linear_warmup_matches_a_direct_loop(tmp_path):
    """get_linear_schedule_with_warmup starts at lr 0: the step after it has b = 0."""
    model, betas = _direct_loop()
    trained = _tiny_llama()
    callback = _make(trained)
    _trainer(trained, tmp_path, callback).train()
    # the bounded correction's first step: d_0 = 0 and b = 0 give beta_max from the formula
    assert callback.betas[0] == pytest.approx(0.9) and None not in callback.betas
    assert callback.betas == pytest.approx(betas, abs=1e-6)
    # the Trainer's loss is computed its own way (token counts): rounding, which Adam's
    # normalisation amplifies where gradients are tiny
    for p, q in zip(model.parameters(), trained.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_transformers_trainer_resumes_exactly(tmp_path):
    whole = _tiny_llama()
    callback = _make(whole)
    _trainer(whole, tmp_path / "whole", callback).train()
    resumed = _tiny_llama()
    second = _make(resumed)
    checkpoint = tmp_path / "whole" / f"checkpoint-{WARMUP}"
    _trainer(resumed, tmp_path / "resumed", second).train(resume_from_checkpoint=str(checkpoint))
    assert second.betas == callback.betas[WARMUP:]  # bit for bit
    for p, q in zip(whole.parameters(), resumed.parameters()):
        assert torch.equal(p, q)


@pytest.mark.parametrize("cls", AM_OPTIMIZERS)
def test_ema_and_swa_helpers(cls):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
    opt = cls(model.parameters(), lr=0.05)
    ema = swa_utils.AveragedModel(model, multi_avg_fn=swa_utils.get_ema_multi_avg_fn(0.9))
    swa_lr = swa_utils.SWALR(opt, swa_lr=0.01, anneal_epochs=2)
    manual = [p.detach().clone() for p in model.parameters()]
    x, y = torch.randn(32, 4), torch.randn(32, 1)
    for step in range(6):
        opt.zero_grad()
        (model(x) - y).pow(2).mean().backward()
        opt.step()
        swa_lr.step()
        ema.update_parameters(model)
        for m, p in zip(manual, model.parameters()):
            if step == 0:
                m.copy_(p.detach())  # the first update copies
            else:
                m.lerp_(p.detach(), 0.1)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.01)
    for m, p in zip(manual, ema.module.parameters()):
        torch.testing.assert_close(m, p, rtol=1e-6, atol=1e-7)


@pytest.mark.slow
@pytest.mark.parametrize("cls", AM_OPTIMIZERS)
def test_torch_compile_of_the_step_with_a_warmup_from_zero(cls):
    """torch.compile(opt.step) under a LambdaLR warmup from lr 0, against eager."""
    torch.manual_seed(0)
    models = [nn.Linear(8, 4) for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    opts = [cls(m.parameters(), lr=0.05, nonfinite="off") for m in models]
    schedulers = [LambdaLR(o, lambda k: min(1.0, k / 3)) for o in opts]
    steps = [opts[0].step, torch.compile(opts[1].step)]
    for _ in range(6):
        x = torch.randn(16, 8)
        for m, o, step, s in zip(models, opts, steps, schedulers):
            o.zero_grad()
            m(x).square().mean().backward()
            step()
            s.step()
    for p, q in zip(*(m.parameters() for m in models)):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
