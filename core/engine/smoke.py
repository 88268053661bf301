"""One real training step before anything is created: a plugin's runtime mistake found by
``validate``, ``run`` and ``ablate`` in one line, not at step 1 of a run with a traceback.

The experiment is built for real on the CPU and trained one optimizer step on two samples
of its task's shape (fp32, eager): every component's forward and the backward run once. The
samples are random tokens of the task's vocabulary and length, not drawn from its data set,
so that the check takes seconds even where the data set would take minutes to generate.
Each built module's output is checked against its kind's contract (a shape, a type), and an
exception is attributed to the innermost built component whose code raised it; either is
reported as a :class:`~ponderkit.ConfigError` at the component's config path, naming its
plugin. A model too large to build on the CPU in seconds is not stepped (the build checks
still ran)."""

from __future__ import annotations

import contextlib
import traceback
from collections.abc import Iterator
from typing import Any

import attrs
import torch
from torch import Tensor

from ..contract.errors import ConfigError, Issue
from ..contract.experiment import Experiment
from ..contract.interfaces import Routing

#: the most work stepped on the CPU, in parameters x sequence length: about 5 s on one core
#: (TRM-attention on 9x9 Sudoku, 6.8M x 81, takes 5.5 s; TRM on 30x30 mazes, 6.8M x 900, 29 s)
MAX_WORK = 1e9
SAMPLES = 2


class _Breach(Exception):
    """A module's output broke its kind's contract."""


def smoke_step(exp: Experiment, registry: Any, parameters: int | None = None) -> bool:
    """Train ``exp`` one step on a two-sample batch on the CPU; raise a located
    :class:`ConfigError` naming the component and its plugin when a component fails or
    returns the wrong thing. Returns False when the model was too large to step."""
    from .train import Trainer

    if parameters is not None and parameters > MAX_WORK / 16:  # not even built: memory
        return False
    train = attrs.evolve(
        exp.config.train,
        batch_size=SAMPLES,
        eval_batch_size=SAMPLES,
        device="cpu",
        precision="fp32",
        compile=False,
        flops_every=0,
        steps=1,
        epochs=None,  # counting epochs would read the training set's size: its data
        flops=None,
        max_time_s=None,
    )
    config = attrs.evolve(exp.config, train=train)
    threads = torch.get_num_threads()
    rng = torch.get_rng_state()
    try:
        trainer = Trainer(config, registry, run_dir=None, quiet=True)
        if parameters is not None and parameters * trainer.task.seq_len > MAX_WORK:
            return False
        built = trainer.components.built  # (object, kind, key, plugin, path) of each
        with _output_checks(built):
            try:
                trainer.model.train()
                trainer._train_step(_samples(trainer))
            except _Breach as exc:
                raise _located(exp, exc.args[0], exc.args[1]) from None
            except ConfigError:
                raise
            except Exception as exc:
                raise _located(exp, _culprit(exc, built), _describe(exc)) from None
    finally:
        torch.set_num_threads(threads)  # the check leaves the process as it found it
        torch.set_rng_state(rng)
    return True


def smoke_variants(variants: list[Any], registry: Any) -> dict[str, list[Issue]]:
    """:func:`smoke_step` for each of an ablation's variants (``name``, ``config``,
    ``document``), a config shared by several stepped once: variant name -> located issues."""
    from .build import experiment_parameters

    failed: dict[str, list[Issue]] = {}
    done: list[tuple[Any, list[Issue]]] = []  # (config, issues): configs are compared, not hashed
    for v in variants:
        issues = next((found for config, found in done if config == v.config), None)
        if issues is None:
            try:
                exp = Experiment(v.config, v.document)
                smoke_step(exp, registry, experiment_parameters(v.config, registry))
                issues = []
            except ConfigError as exc:
                issues = list(exc.issues)
            done.append((v.config, issues))
        if issues:
            failed[v.name] = issues
    return failed


def _samples(trainer: Any) -> Iterator[dict[str, Tensor]]:
    """Endless batches of ``SAMPLES`` random sequences of the task's vocabulary and length
    (a deep-supervision schedule may draw several)."""
    task, model = trainer.task, trainer.model
    gen = torch.Generator().manual_seed(0)
    while True:
        shape = (SAMPLES, task.seq_len)
        batch = {
            "inputs": torch.randint(0, task.vocab_size, shape, generator=gen),
            "labels": torch.randint(0, task.vocab_size, shape, generator=gen),
        }
        if model.puzzle_emb is not None:  # identifier 0: the blank puzzle
            batch["puzzle_ids"] = torch.zeros(SAMPLES, dtype=torch.long)
        yield batch


def _located(exp: Experiment, who: tuple | None, message: str) -> ConfigError:
    if who is None:
        issue = Issue((), f"one training step on {SAMPLES} samples failed: {message}")
    else:
        _, kind, key, plugin, path = who
        issue = Issue(path, f"{key} (plugin {plugin}): at the first training step, {message}")
    return ConfigError([exp.document.locate(issue)])


def _culprit(exc: BaseException, built: list[tuple]) -> tuple | None:
    """The built component whose own code raised ``exc``: the innermost traceback frame
    whose ``self`` is one of them (a frame of the runtime calling it is not)."""
    by_id = {id(entry[0]): entry for entry in built}
    found = None
    tb = exc.__traceback__
    while tb is not None:
        owner = tb.tb_frame.f_locals.get("self")
        if id(owner) in by_id and by_id[id(owner)][0] is owner:
            found = by_id[id(owner)]
        tb = tb.tb_next
    return found


def _describe(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" ({frames[-1].filename.rsplit('/', 1)[-1]}:{frames[-1].lineno})" if frames else ""
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}{where}"


@contextlib.contextmanager
def _output_checks(built: list[tuple]) -> Iterator[None]:
    """Forward hooks checking each built module's output against its kind's contract."""
    handles, wrapped = [], []
    for entry in built:
        obj, kind = entry[0], entry[1]
        check = _CHECKS.get(kind)
        if check is not None and isinstance(obj, torch.nn.Module):
            handles.append(obj.register_forward_hook(_hook(entry, check)))
        if kind == "halting":  # not a forward: checked through an instance attribute
            obj.should_halt = _checked_should_halt(entry, obj.should_halt)
            wrapped.append(obj)
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
        for obj in wrapped:
            del obj.should_halt  # the class's method again


def _checked_should_halt(entry: tuple, should_halt: Any) -> Any:
    def checked(signals: Any, steps: Tensor, training: bool) -> Any:
        out = should_halt(signals, steps, training)
        want = (steps.shape[0],)
        if not isinstance(out, Tensor) or out.dtype != torch.bool or tuple(out.shape) != want:
            got = _kind(out) + (f" of dtype {out.dtype}" if isinstance(out, Tensor) else "")
            raise _Breach(entry, f"should_halt returned {got}, not a {want} bool tensor")
        return out

    return checked


def _hook(entry: tuple, check: Any) -> Any:
    def hook(module: Any, args: tuple, output: Any) -> None:
        problem = check(module, args, output)
        if problem:
            raise _Breach(entry, problem)

    return hook


def _kind(value: Any) -> str:
    if isinstance(value, Tensor):
        return f"a tensor of shape {tuple(value.shape)}"
    return f"a {type(value).__name__}"


def _same_shape(module: Any, args: tuple, out: Any) -> str | None:
    h = args[0] if args else None
    if not isinstance(out, Tensor):
        return f"forward returned {_kind(out)}, not a tensor (B, T, D)"
    if isinstance(h, Tensor) and out.shape != h.shape:
        return (
            f"forward returned shape {tuple(out.shape)} for input {tuple(h.shape)} (must keep it)"
        )
    return None


def _routing(module: Any, args: tuple, out: Any) -> str | None:
    if not isinstance(out, Routing):
        return f"forward returned {_kind(out)}, not a ponderkit.Routing"
    x = args[0] if args else None
    n = x.reshape(-1, x.shape[-1]).shape[0] if isinstance(x, Tensor) else None
    want = (n, module.num_experts)  # a Router member the build checked
    for name, value in (("weights", out.weights), ("mask", out.mask), ("logits", out.logits)):
        if not isinstance(value, Tensor):
            return f"forward returned a Routing whose {name} is {_kind(value)}"
        if n is not None and tuple(value.shape) != want:
            return (
                f"forward returned Routing.{name} of shape {tuple(value.shape)}, not {want} (N, E)"
            )
    if out.mask.dtype != torch.bool:
        return f"forward returned Routing.mask of dtype {out.mask.dtype}, not torch.bool"
    return None


def _signals(module: Any, args: tuple, out: Any) -> str | None:
    y = args[0] if args else None
    if not isinstance(out, dict):
        return f"forward returned {_kind(out)}, not a dict of halting signals"
    batch = y.shape[0] if isinstance(y, Tensor) else None
    for name, value in out.items():
        if not isinstance(value, Tensor):
            return f"forward returned signal {name!r} as {_kind(value)}, not a tensor"
        if batch is not None and (value.ndim == 0 or value.shape[0] != batch):
            return f"forward returned signal {name!r} of shape {tuple(value.shape)}, not ({batch}, ...)"
    return None


def _step(module: Any, args: tuple, out: Any) -> str | None:
    if not (isinstance(out, tuple) and len(out) == 2 and isinstance(out[0], dict)):
        return f"forward returned {_kind(out)}, not (carry dict, y)"
    x = args[1] if len(args) > 1 else None
    if isinstance(x, Tensor) and (not isinstance(out[1], Tensor) or out[1].shape != x.shape):
        return f"forward returned y as {_kind(out[1])}, not the input's shape {tuple(x.shape)}"
    return None


_CHECKS = {
    "mixer": _same_shape,
    "ffn": _same_shape,
    "block": _same_shape,
    "router": _routing,
    "halting": _signals,
    "recursion": _step,
}
