"""TRM's fast-path options give the plain path's results: the injection y + x added once per
latent recursion, ``no_grad_precision: bf16`` (within bf16 rounding) and ``train.compile:
block`` (each block compiled once, the recursion left alone)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from ponderkit.contract.experiment import load_experiment
from ponderkit.engine.train import Trainer
from ponderkit.plugins.trm.recursion import TRMRecursion
from torch import nn

REPO = Path(__file__).resolve().parents[3]


def trainer_for(registry, extra=(), mixer="mlp_t") -> Trainer:
    overrides = [
        "model.d_model=32",
        "model.recursion.H_cycles=3",
        "model.recursion.L_cycles=2",
        f"model.recursion.block.mixer={{name: {mixer}}}",
        "train.threads=1",
        "train.batch_size=4",
        *extra,
    ]
    cfg = load_experiment(
        REPO / "experiments" / "trm_sudoku4_cpu.yaml", overrides, registry=registry
    ).config
    return Trainer(cfg, registry, quiet=True)


def batches(trainer: Trainer, n: int = 4):
    """Random 4x4 Sudoku-shaped batches (no data set is generated)."""
    gen = torch.Generator().manual_seed(0)
    shape = (trainer.config.train.batch_size, trainer.task.seq_len)
    vocab = trainer.task.vocab_size
    pool = [
        {
            "inputs": torch.randint(1, vocab, shape, generator=gen),
            "labels": torch.randint(1, vocab, shape, generator=gen),
        }
        for _ in range(n)
    ]
    while True:
        yield from pool


def paper_deep_recursion(rec: TRMRecursion, x, y, z, ctx):
    """The paper's pseudocode, with the injection y + x recomputed at every latent update."""
    for cycle in range(rec.H_cycles):
        with torch.set_grad_enabled(cycle == rec.H_cycles - 1 and torch.is_grad_enabled()):
            for _ in range(rec.L_cycles):
                z = rec.net(z, y + x, ctx)
            y = rec.net(y, z, ctx)
    return y, z


def test_latent_recursion_equals_the_papers_pseudocode(registry):
    trainer = trainer_for(registry)
    model = trainer.model.double()
    batch = next(batches(trainer))
    ctx = model.context()
    x = model.embed(batch)
    carry = model.initial_carry(x)
    got, y = model.recursion(carry, x, ctx)
    want_y, want_z = paper_deep_recursion(model.recursion, x, carry["y"], carry["z"], ctx)
    torch.testing.assert_close(got["y"], want_y, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got["z"], want_z, rtol=1e-12, atol=1e-12)
    grads = torch.autograd.grad(y.square().sum(), list(model.recursion.parameters()))
    want = torch.autograd.grad(want_y.square().sum(), list(model.recursion.parameters()))
    for a, b in zip(grads, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("mixer", ["mlp_t", "attention"])
def test_no_grad_bf16_recursions_err_as_much_as_bf16_autocast_does(registry, mixer):
    """Against a float64 run: under bf16 autocast (``train.precision: bf16``) the option errs
    about as much as the plain path (whose residual stream stays float32); without autocast it
    does round (it is not the float32 path); the graded output and the carry stay float32."""
    plain = trainer_for(registry, mixer=mixer).model
    fast = trainer_for(registry, ["model.recursion.no_grad_precision=bf16"], mixer=mixer).model
    fast.load_state_dict(plain.state_dict())
    reference = trainer_for(registry, mixer=mixer).model.double()
    reference.load_state_dict(plain.state_dict())
    batch = next(batches(trainer_for(registry)))
    outputs = {}
    runs = [("plain", plain, False), ("plain_bf16", plain, True), ("fast", fast, False)]
    runs += [("fast_bf16", fast, True), ("float64", reference, False)]
    for name, model, bf16 in runs:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            ctx = model.context()
            x = model.embed(batch)
            carry, logits, _ = model.step(model.initial_carry(x), x, ctx)
        outputs[name] = (carry, logits)
    want = outputs["float64"][1].detach()

    def err(name: str) -> float:
        got = outputs[name][1].detach().double()
        return float((got - want).norm() / want.norm())

    assert err("plain") < 1e-5
    assert 1e-3 < err("fast") < 0.25
    assert err("fast_bf16") < 1.5 * err("plain_bf16"), (err("fast_bf16"), err("plain_bf16"))
    carry, logits = outputs["fast"]
    assert logits.dtype == torch.float32 and logits.requires_grad
    assert all(v.dtype == torch.float32 for v in carry.values())


@pytest.mark.parametrize("mixer", ["mlp_t", "attention"])
def test_bf16_stream_errs_like_bf16_and_keeps_its_states_in_bf16(registry, mixer):
    """``precision: bf16`` (the authors' ``forward_dtype``): against a float64 run it errs as
    bf16 rounding does (more than the float32 path, within a few percent), with or without
    autocast; the states, the carry and the output are bfloat16; gradients reach every weight,
    in float32."""
    plain = trainer_for(registry, mixer=mixer).model
    stream = trainer_for(registry, ["model.recursion.precision=bf16"], mixer=mixer).model
    stream.load_state_dict(plain.state_dict())
    reference = trainer_for(registry, mixer=mixer).model.double()
    reference.load_state_dict(plain.state_dict())
    batch = next(batches(trainer_for(registry)))

    def run(model, bf16: bool):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            ctx = model.context()
            x = model.embed(batch)
            return model.step(model.initial_carry(x), x, ctx)

    want = run(reference, False)[1].detach()

    def err(logits) -> float:
        return float((logits.detach().double() - want).norm() / want.norm())

    autocast_err = err(run(plain, True)[1])  # bf16 matmuls, float32 residual stream
    for bf16 in (False, True):
        carry, logits, _ = run(stream, bf16)
        assert 1e-3 < err(logits) < 0.25, err(logits)
        assert err(logits) < 2 * autocast_err, (err(logits), autocast_err)
        assert all(v.dtype == torch.bfloat16 for v in carry.values())
        assert logits.dtype == torch.bfloat16
        weights = [p for p in stream.parameters() if p.requires_grad]
        grads = torch.autograd.grad(logits.float().square().mean(), weights, allow_unused=True)
        names = [n for n, p in stream.named_parameters() if p.requires_grad]
        named = dict(zip(names, grads, strict=True))
        for name, g in named.items():
            if name.startswith(("recursion.", "token_emb", "head")):
                assert g is not None and g.dtype == torch.float32, name
                assert torch.isfinite(g).all() and g.abs().sum() > 0, name


def test_bf16_stream_trains_like_the_plain_step(registry):
    """One deep-supervision optimizer step from the same weights: loss and gradient norm agree
    within bf16 rounding, and differ (it did run in bf16)."""
    results = []
    for extra in ([], ["model.recursion.precision=bf16"]):
        trainer = trainer_for(registry, extra)
        metrics = trainer.schedule.train_step(trainer.model, batches(trainer), trainer)
        results.append((float(metrics["loss"]), float(metrics["grad_norm"])))
    (loss, norm), (bf_loss, bf_norm) = results
    assert abs(bf_loss - loss) < 2e-2 * loss, results
    assert abs(bf_norm - norm) < 1e-1 * norm, results
    assert bf_loss != loss


def test_no_grad_bf16_training_step_matches_the_plain_step(registry):
    """One deep-supervision optimizer step each from the same weights: loss and gradient norm
    agree within bf16 rounding (later steps start from carries that went through it, and a
    random recurrent network amplifies any difference, so one step is what is compared)."""
    results = []
    for extra in ([], ["model.recursion.no_grad_precision=bf16"]):
        trainer = trainer_for(registry, extra)
        metrics = trainer.schedule.train_step(trainer.model, batches(trainer), trainer)
        results.append((float(metrics["loss"]), float(metrics["grad_norm"])))
    (loss, norm), (fast_loss, fast_norm) = results
    assert abs(fast_loss - loss) < 1e-2 * loss, results
    assert abs(fast_norm - norm) < 5e-2 * norm, results
    assert fast_loss != loss  # the option did run in bf16


def test_compile_block_compiles_each_block_once_and_trains_as_eager(registry, monkeypatch):
    """``train.compile: block``: every block is compiled, the recursion is not, and two
    optimizer steps give the eager losses (dynamo traces the blocks; the ``eager`` backend
    runs the traced graphs, so no C++ is compiled here)."""
    compiled: list[nn.Module] = []
    original = nn.Module.compile

    def compile_eagerly(self, *args, **kwargs):
        compiled.append(self)
        original(self, backend="eager")

    monkeypatch.setattr(nn.Module, "compile", compile_eagerly)
    torch._dynamo.reset()
    losses = []
    for mode in ("false", "block"):
        trainer = trainer_for(registry, [f"train.compile={mode}"])
        data = batches(trainer)
        losses.append(
            [float(trainer.schedule.train_step(trainer.model, data, trainer)["loss"]) for _ in "ab"]
        )
    blocks = list(trainer.model.recursion.net.blocks)
    assert compiled == blocks and trainer.model.recursion._compiled_call_impl is None
    assert all(b._compiled_call_impl is not None for b in blocks)
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-5, atol=1e-6)
    torch._dynamo.reset()


def test_compile_accepts_true_false_and_block_only(registry):
    for value, want in (("true", True), ("false", False), ("block", "block")):
        cfg = load_experiment(
            REPO / "experiments" / "trm_sudoku4_cpu.yaml",
            [f"train.compile={value}"],
            registry=registry,
        ).config
        assert cfg.train.compile == want
    from ponderkit.contract.errors import ConfigError

    with pytest.raises(ConfigError, match=r"train.compile.*or 'block'.*did you mean 'block'"):
        load_experiment(
            REPO / "experiments" / "trm_sudoku4_cpu.yaml", ["train.compile=blok"], registry=registry
        )


@pytest.mark.parametrize(
    ("compile_", "mode"), [("true", "reduce-overhead"), ("block", "max-autotune")]
)
def test_compile_mode_reaches_torch_compile(registry, monkeypatch, compile_, mode):
    """``train.compile_mode`` is handed to torch.compile for what ``train.compile`` compiles
    (recorded, not compiled: no C++ toolchain needed)."""
    seen: list[tuple[str, object]] = []

    def record(self, *args, **kwargs):
        seen.append((type(self).__name__, kwargs.get("mode")))

    monkeypatch.setattr(nn.Module, "compile", record)
    trainer = trainer_for(registry, [f"train.compile={compile_}", f"train.compile_mode={mode}"])
    assert seen and all(m == mode for _, m in seen), seen
    blocks = {type(b).__name__ for b in trainer.model.recursion.net.blocks}
    names = {name for name, _ in seen}
    assert names == (blocks if compile_ == "block" else {type(trainer.model.recursion).__name__})
