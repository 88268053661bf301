"""EAVI's static decode: the preallocated KV cache (static shapes, device-side position, length
mask) generates what the dynamic cache generates, an EAVI step trains alike with either, the
decode loop never syncs with the host, and on CUDA one captured decode step replays it."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from ponderkit import Decoder, StaticCacheUnsupported, StaticKVCache, generate
from ponderkit.contract.experiment import load_experiment
from ponderkit.engine.train import Trainer

REPO = Path(__file__).resolve().parents[2]
SMALL = ["train.threads=1", "train.batch_size=8", "model.d_model=32"]
GQA = "model.recursion.block.mixer={name: attention, heads: 4, kv_heads: 2, causal: true}"


def trainer(registry, *overrides: str, experiment: str = "seq2seq_sort.yaml") -> Trainer:
    exp = load_experiment(
        REPO / "experiments" / experiment, [*SMALL, *overrides], registry=registry
    )
    return Trainer(exp.config, registry, quiet=True)


def prompt_of(t: Trainer, batch: int = 6) -> tuple[torch.Tensor, int]:
    b = next(t.task.eval_batches(batch))
    p = t.task.prompt_len
    return b["inputs"][:, :p], b["labels"].shape[1] - p + 1


@pytest.mark.parametrize(
    "overrides",
    [
        [],
        [GQA],
        [  # one block re-applied twice: a cache slot per application
            "model.recursion={name: universal, block: {name: pre_norm, mixer: "
            "{name: attention, heads: 4, causal: true}, ffn: {name: swiglu, expansion: 2}}}",
            "model.halting={name: fixed, steps: 2}",
        ],
        ["model.positions=learned"],
    ],
    ids=["mha", "gqa", "universal", "learned-positions"],
)
def test_static_cache_generates_what_the_dynamic_cache_generates(registry, overrides):
    t = trainer(registry, *overrides)
    model = t.model.eval()
    prompt, length = prompt_of(t)
    for temperature in (0.0, 1.0):  # greedy, and sampled from one seed
        runs = {}
        for cache in ("dynamic", "static"):
            g = torch.Generator().manual_seed(5)
            runs[cache] = generate(model, prompt, length, temperature, g, cache=cache)
        assert torch.equal(runs["dynamic"][0], runs["static"][0])
        torch.testing.assert_close(runs["dynamic"][1], runs["static"][1], rtol=1e-5, atol=1e-5)
    model.double()  # float64: the two caches sum the same terms, so the logits agree to 1e-12
    dyn, sta = (generate(model, prompt, length, cache=c) for c in ("dynamic", "static"))
    assert torch.equal(dyn[0], sta[0])
    torch.testing.assert_close(dyn[1], sta[1], rtol=1e-12, atol=1e-12)
    # and both equal recomputing the prefix (the cache-free reference)
    torch.testing.assert_close(generate(model, prompt, length, use_cache=False)[1], sta[1])


def test_static_cache_keeps_every_decode_step_one_shape(registry, monkeypatch):
    t = trainer(registry)
    model = t.model.eval()
    prompt, length = prompt_of(t)
    shapes = []
    original = StaticKVCache.attend

    def spy(self, q, k, v, ctx, causal=True, merge_heads=False):
        out = original(self, q, k, v, ctx, causal, merge_heads)
        slot = self.slots[self._next - 1]
        shapes.append((tuple(q.shape), tuple(slot["k"].shape), slot["k"].data_ptr()))
        return out

    monkeypatch.setattr(StaticKVCache, "attend", spy)
    generate(model, prompt, length, cache="static")
    layers = 2
    decode = shapes[layers:]  # after the prompt's call of each layer
    assert len(decode) == (length - 1) * layers
    assert len(set(decode[0::layers])) == 1 and len(set(decode[1::layers])) == 1
    assert decode[0][1][2] == prompt.shape[1] + length - 1  # T_max: prompt + decoded tokens


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs CUDA"))]  # fmt: skip


@pytest.mark.parametrize("device", DEVICES)
def test_the_static_decode_loop_never_syncs_with_the_host(registry, monkeypatch, device):
    """Every decode step runs without a host sync: a Python-level read of a tensor's value
    (item, tolist, bool, int, float, index) raises inside the loop. On CPU this is the proxy
    for what a CUDA graph capture demands (a sync inside an ATen op, e.g. nonzero, goes
    unseen there); on CUDA ``torch.cuda.set_sync_debug_mode("error")`` sees those too."""
    t = trainer(registry, f"train.device={device}")
    model = t.model.eval()
    prompt, length = prompt_of(t)
    prompt = prompt.to(device)
    cache = StaticKVCache(length - 1, prompt.device)
    from ponderkit.engine import generate as gen

    with torch.no_grad():
        last = gen.forward_logits(model, gen.embed_tokens(model, prompt), cache)[:, -1]
    step = Decoder("static")._step(model, cache)

    def forbidden(*_a, **_k):
        raise AssertionError("host sync inside the decode loop")

    for name in ("item", "tolist", "__bool__", "__int__", "__float__", "__index__"):
        monkeypatch.setattr(torch.Tensor, name, forbidden)
    g = torch.Generator(device).manual_seed(0)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
    try:
        with torch.no_grad():
            for i in range(length - 1):
                token = gen._pick(last, 1.0 if i % 2 else 0.0, g)
                x = gen.embed_tokens(model, token[:, None], offset=gen.cache_rows(cache))
                last = step(x)
    finally:
        if device == "cuda":
            torch.cuda.set_sync_debug_mode("default")
        monkeypatch.undo()
    assert int(cache.pos) == cache.written == prompt.shape[1] + length - 1


def eavi_step(
    registry, decode: str, feed: str = "tokens", temperature=0.0, experiment="seq2seq_sort.yaml"
):
    """One EAVI step; its metrics, its gradients (no optimizer step) and the decode mode run."""
    t = trainer(
        registry,
        f"schedule={{name: eavi, feed: {feed}, decode: {decode}, temperature: {temperature}}}",
        experiment=experiment,
    )
    grads = {}

    def optimize(loss):  # keep the gradients, take no optimizer step
        loss.backward()
        grads.update(
            {n: p.grad.clone() for n, p in t.model.named_parameters() if p.grad is not None}
        )
        return torch.zeros(())

    t.optimize = optimize
    metrics = t.schedule.train_step(t.model, t._batches(), t)
    return metrics, grads, t.schedule.decoder.mode


@pytest.mark.parametrize(("feed", "temperature"), [("tokens", 0.0), ("soft", 0.0), ("tokens", 1.0)])
def test_an_eavi_step_with_static_decode_trains_as_the_eager_one(registry, feed, temperature):
    eager, eager_grads, mode = eavi_step(registry, "eager", feed=feed, temperature=temperature)
    assert mode == "dynamic"
    for decode in ("static", "auto"):  # auto is static on CPU
        static, grads, mode = eavi_step(registry, decode, feed=feed, temperature=temperature)
        assert mode == "static"
        for key in ("loss", "lm_loss", "gen_token_acc", "gen_exact_acc"):
            torch.testing.assert_close(static[key], eager[key], rtol=1e-6, atol=1e-6)
        assert grads.keys() == eager_grads.keys() and grads
        for name, grad in grads.items():
            torch.testing.assert_close(grad, eager_grads[name], rtol=1e-6, atol=1e-6)


def test_a_mixer_without_static_support_decodes_eager(registry):
    """seed003_cpu's nsa mixer reads the dynamic cache: ``static`` refuses it at the prompt,
    and eavi falls back to the eager decode (one warning when asked for explicitly)."""
    t = trainer(registry, experiment="seed003_cpu.yaml")
    prompt, length = prompt_of(t)
    with pytest.raises(StaticCacheUnsupported):
        generate(t.model.eval(), prompt, length, cache="static")
    with pytest.warns(RuntimeWarning, match="dynamic KV cache"):
        _, _, mode = eavi_step(registry, "static", experiment="seed003_cpu.yaml")
    assert mode == "dynamic"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # auto falls back silently
        _, _, mode = eavi_step(registry, "auto", experiment="seed003_cpu.yaml")
    assert mode == "dynamic"


def test_graph_decode_on_cpu_runs_the_static_step(registry):
    t = trainer(registry)
    model = t.model.eval()
    prompt, length = prompt_of(t)
    decoder = Decoder("graph")
    tokens, logits = decoder(model, prompt, length)
    ref = generate(model, prompt, length, cache="static")
    assert torch.equal(tokens, ref[0]) and torch.equal(logits, ref[1])
    assert decoder.mode == "graph"  # nothing to capture on CPU: no downgrade, no warning


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
@pytest.mark.parametrize("autocast", [False, True])
def test_graph_decode_replays_the_static_step_on_cuda(registry, autocast):
    t = trainer(registry, "train.device=cuda")
    model = t.model.eval()
    prompt, length = prompt_of(t)
    prompt = prompt.cuda()
    dtype = torch.bfloat16 if autocast else torch.float32
    runs = {}
    for mode in ("dynamic", "static", "graph"):
        decoder = Decoder(mode)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a failed capture warns: fail the test instead
            with torch.autocast("cuda", dtype=dtype, enabled=autocast):
                runs[mode] = decoder(model, prompt, length)
        assert decoder.mode == mode
    tol = 2e-2 if autocast else 1e-4
    torch.testing.assert_close(runs["graph"][1], runs["static"][1], rtol=tol, atol=tol)
    torch.testing.assert_close(runs["graph"][1], runs["dynamic"][1], rtol=tol, atol=tol)
    if not autocast:
        assert torch.equal(runs["graph"][0], runs["dynamic"][0])
    # a second call captures afresh over its own cache and gives the same result
    again = Decoder("graph")(model, prompt, length)
    assert torch.equal(again[0], runs["graph"][0])
