"""The training loop: builds task, model, optimizer, schedule and callbacks from a validated
experiment, then runs optimizer steps, logs metrics, evaluates and checkpoints."""

from __future__ import annotations

import contextlib
import math
import random
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..contract.config import Spec, iter_specs, unstructure
from ..contract.experiment import ExperimentConfig, OptimizerConfig
from ..contract.interfaces import Batch, FixedTrainingSet
from ..contract.yamlio import dump
from . import distributed
from .build import build_components
from .callbacks import CallbackRelay
from .context import BuildContext
from .device import autocast, resolve_device, to_device
from .evaluate import PuzzleOutcomes, evaluate, write_puzzle_outcomes
from .flops import count_step_flops
from .nn import parameter_count
from .provenance import plugin_sources
from .recovery import Interrupted, StopOnSignal, prune
from .runs import MetricsLog, kill_point, save_checkpoint, write_meta, write_text_atomic


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_optimizer(
    model: nn.Module, spec: Spec, registry: Any, exclude: frozenset[int] = frozenset()
) -> torch.optim.Optimizer:
    """The ``optimizer`` plugin ``spec`` names, over ``model``'s parameters; the plugin
    declares the parameter groups. Parameters whose ``id`` is in ``exclude`` are left out (a
    callback that updates them itself owns them)."""
    ctx = BuildContext(registry, paths={id(spec): ("optimizer",)})
    return ctx.build(spec, model=model, exclude=exclude)


def lr_factor(
    step: int, total: int | None, cfg: OptimizerConfig, done: float | None = None
) -> float:
    """Linear warmup to 1, then constant or cosine down to ``min_lr_ratio``.

    The cosine follows ``step`` out of ``total`` steps, or, when training is measured in
    epochs or FLOPs (``total`` None), ``done``: the fraction of that budget spent."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.decay == "constant":
        return 1.0
    if total is None:
        progress = min(1.0, done or 0.0)
    else:
        progress = min(1.0, (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps))
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


class Trainer:
    """Owns device, model, optimizer, LR schedule, callbacks and the run directory.

    Under ``torchrun`` every rank builds one (same arguments); rank 0 alone writes the run
    directory, the others train their shard of each batch (:mod:`.distributed`).

    Non-finite steps (``train.nonfinite``): with an optimizer that skips a step on device
    (torch's fused AdamW, which the ``adamw`` plugin builds on CUDA) the check costs no host
    sync a step: the optimizer is handed the step's flag as ``found_inf`` and the trainer
    counts on device (:class:`NonFiniteTally`), reading the count where it syncs anyway (each
    logged step, evaluation, checkpoint, the end), and stops or warns there, naming the first
    such step; under ``stop`` every step after it is skipped too and nothing is written after
    it. Other optimizers check each step on the host (:meth:`_finite_update`)."""

    def __init__(
        self,
        config: ExperimentConfig,
        registry: Any,
        run_dir: Path | None = None,
        quiet: bool = False,
    ):
        self.config = config
        self.registry = registry
        self.dist = distributed.current()
        self.dist.check_batch_size(config.train.batch_size)
        # every rank takes part in checkpoints (they gather per-rank state); rank 0 writes
        self.keeps_run = run_dir is not None
        self.run_dir = run_dir if self.dist.is_main else None
        self.quiet = quiet or not self.dist.is_main
        train = config.train
        if train.threads:
            torch.set_num_threads(train.threads)
        self.device = self.dist.device(resolve_device(train.device))
        seed_everything(config.seed)
        with self.dist.main_first():  # rank 0 generates (and caches) the data, then the rest
            built = build_components(config, registry)
        self.components = built  # as built (the smoke step checks each one's outputs)
        self.task, self.schedule, self.callbacks = built.task, built.schedule, built.callbacks
        # the callbacks' hooks, dispatched by pluggy (checked when each callback was built)
        self.hooks = CallbackRelay(self.callbacks, [spec.name for spec in config.callbacks])
        self.model = built.model.to(self.device)
        self.dist.broadcast_module(self.model)
        # parameters a callback updates itself (e.g. sign-SGD on the puzzle table) stay out
        # of the optimizer
        owned = self.hooks.owned_parameters(self)
        self.optimizer = build_optimizer(
            self.model, config.optimizer, registry, frozenset(map(id, owned))
        )
        mode = None if train.compile_mode == "default" else train.compile_mode
        if train.compile == "block":  # in place: parameter names stay the same
            for block in dict.fromkeys(built.blocks):  # a shared block once
                block.compile(mode=mode)
        elif train.compile:
            self.model.recursion.compile(mode=mode)
        self.step = 0
        self.samples_before = 0  # global samples drawn before a resume (any world size)
        self.samples = 0  # fresh samples drawn (a deep-supervision slot refilled counts one)
        self.flops = 0.0  # training FLOPs spent, see _train_step
        self.flops_per_step = 0.0  # the latest measurement
        self.nonfinite_skipped = 0  # steps skipped for a nan/inf loss (train.nonfinite: skip)
        # an optimizer that skips a step on device counts the non-finite ones there, read
        # where the loop syncs anyway; None: the per-step check (one host sync a step)
        self.nonfinite_tally = (
            NonFiniteTally(self.device) if defers_nonfinite(self.optimizer, owned) else None
        )
        self.sample_limit = self._sample_limit()
        self.elapsed_before = 0.0  # training seconds spent before a resume
        self._t0: float | None = None
        self.metrics_log = MetricsLog(self.run_dir / "metrics.jsonl") if self.run_dir else None
        self._set_lr()

    # -- services for schedules ------------------------------------------------------------
    def parameters_reset(self, touched: list[tuple[Any, int]], index: Any) -> None:
        """Tell every callback that slices ``index`` along each (parameter, dim) in ``touched``
        were re-initialised (callbacks that keep their own copy of the weights follow)."""
        self.hooks.hook.on_parameters_reset(trainer=self, touched=touched, index=index)

    def autocast(self) -> contextlib.AbstractContextManager:
        return autocast(self.config.train.precision, self.device)

    def to_device(self, batch: Batch) -> Batch:
        return to_device(batch, self.device)

    def optimize(self, loss: Tensor) -> Tensor:
        """Backward, clip, step, zero the gradients; returns the pre-clip gradient norm."""
        loss.backward()
        self.dist.average_gradients(list(self.model.parameters()))
        clip = self.config.optimizer.config.grad_clip
        # only the optimizer's own parameters: a callback-owned one keeps its gradient for it
        groups = self.optimizer.param_groups
        params = [p for g in groups for p in g["params"] if p.grad is not None]
        if clip:
            norm = torch.nn.utils.clip_grad_norm_(params, clip)
        else:
            norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params]))
        if self.nonfinite_tally is not None:  # no host sync: the optimizer skips on device
            self._step_unless_nonfinite(loss, norm)
            self.optimizer.zero_grad(set_to_none=True)
            return norm.detach()
        if not self._finite_update(loss, norm):  # no update: the weights stay finite
            self.model.zero_grad(set_to_none=True)
            return norm.detach()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return norm.detach()

    def _finite_update(self, loss: Tensor, norm: Tensor) -> bool:
        """Whether this step's loss and gradient norm are finite; if not, stop the run with
        :class:`~ponderkit.contract.errors.NonFinite` (``train.nonfinite: stop``) or count the
        step as skipped (``skip``). One host sync a step: a NaN step must not reach the
        weights, and every rank decides alike. (The per-step path; an optimizer that skips a
        step on device takes :meth:`_step_unless_nonfinite` instead.)"""
        finite = torch.isfinite(loss.detach()).all() & torch.isfinite(norm.detach())
        (bad,) = self.dist.agree(int(not bool(finite)))
        if not bad:
            return True
        what = "loss" if not bool(torch.isfinite(loss.detach()).all()) else "gradient norm"
        value = float(loss.detach().float().sum() if what == "loss" else norm)
        self._met_nonfinite(what, value, self.step + 1)
        return False

    def _step_unless_nonfinite(self, loss: Tensor, norm: Tensor) -> None:
        """The optimizer step, skipped on device when this step's loss or gradient norm is
        non-finite: no host sync (the deferred path, see :class:`NonFiniteTally`).

        The optimizer reads ``found_inf`` as torch's GradScaler hands it over: at 1 its
        fused kernel leaves parameters and moments alone and takes back the step count. Under
        ``train.nonfinite: stop`` every later step is skipped too, so the weights stay those
        of the step before until the loop reads the tally and stops."""
        tally = self.nonfinite_tally
        assert tally is not None
        loss_bad = ~torch.isfinite(loss.detach()).all()
        norm_bad = ~torch.isfinite(norm.detach())
        bad = loss_bad | norm_bad
        if self.dist.active:  # every rank skips alike: a device all-reduce, no host sync
            import torch.distributed as dist

            flag = bad.to(torch.float32)
            dist.all_reduce(flag, dist.ReduceOp.MAX)
            bad = flag > 0
        value = torch.where(loss_bad, loss.detach().float().sum(), norm.detach().float())
        tally.record(bad, self.step + 1, loss_bad, value)
        stop = self.config.train.nonfinite == "stop"
        skip = tally.count > 0 if stop else bad
        self.optimizer.found_inf = skip.to(torch.float32)  # type: ignore[attr-defined]
        try:
            self.optimizer.step()
        finally:
            vars(self.optimizer).pop("found_inf", None)

    def _settle_nonfinite(self) -> None:
        """Read the device tally of non-finite steps (the deferred path; one host sync, where
        the loop syncs anyway): stop the run or count the skipped steps, as
        :meth:`_finite_update` would have at each of them. Called before anything is logged,
        evaluated or checkpointed, so nothing is written after a non-finite step under
        ``train.nonfinite: stop``."""
        if self.nonfinite_tally is None:
            return
        read = self.nonfinite_tally.read()
        if read is not None:
            count, step, what, value = read
            self._met_nonfinite(what, value, step, count)

    def _met_nonfinite(self, what: str, value: float, step: int, count: int = 1) -> None:
        """``count`` non-finite steps, the first at ``step`` (its ``what``, ``value``): warned
        about once and counted (``skip``) or the run stops with NonFinite (``stop``)."""
        if self.config.train.nonfinite == "skip":
            if not self.nonfinite_skipped and not self.quiet:
                print(f"warning: non-finite {what} ({value}) at step {step}: step "
                      "skipped (train.nonfinite: skip; counted as nonfinite_skipped)",
                      file=sys.stderr, flush=True)  # fmt: skip
            self.nonfinite_skipped += count
            return
        from ..contract.errors import NonFinite
        from .recovery import checkpoints_newest_first

        saved = checkpoints_newest_first(self.run_dir) if self.run_dir else []
        kept = f"its last checkpoint, {saved[0].name}, is kept" if saved else "no checkpoint"
        raise NonFinite(
            f"non-finite {what} ({value}) at step {step}: the run stopped before "
            f"updating the weights; {kept} (train.nonfinite: skip skips such steps instead)"
        )

    def _sample_limit(self) -> int | None:
        """``train.epochs`` x the task's training-set size, or None (a step budget)."""
        epochs = self.config.train.epochs
        if epochs is None:
            return None
        size = self.task.train_size if isinstance(self.task, FixedTrainingSet) else None
        if not size:
            from ..contract.errors import InputError

            raise InputError(
                f"train.epochs: task {self.config.task.name!r} has no fixed training set "
                "(no train_size) to count epochs of; set train.steps instead"
            )
        return epochs * int(size)

    def budget_spent(self) -> str | None:
        """Why training is over (``steps``, ``epochs``, ``flops``), or None while it goes on."""
        steps = self.config.train.steps
        if steps is not None and self.step >= steps:
            return "steps"
        if self.sample_limit is not None and self.samples >= self.sample_limit:
            return "epochs"
        if self.config.train.flops is not None and self.flops >= self.config.train.flops:
            return "flops"
        return None

    def progress(self) -> float:
        """The fraction of the training budget spent: steps, epochs' samples or FLOPs."""
        train = self.config.train
        if train.flops is not None:
            return min(1.0, self.flops / train.flops)
        if self.sample_limit:
            return min(1.0, self.samples / self.sample_limit)
        return min(1.0, self.step / train.steps) if train.steps else 0.0

    def _set_lr(self) -> None:
        steps = self.config.train.steps
        done = None if steps is not None else self.progress()
        factor = lr_factor(self.step, steps, self.config.optimizer.config, done)
        for group in self.optimizer.param_groups:
            group["lr"] = self.config.optimizer.config.lr * factor

    # -- the loop --------------------------------------------------------------------------
    def fit(self) -> dict[str, float]:
        # Tiny gradients late in training become denormal floats, which run ~100x slower on
        # x86 CPUs (seen here: 11k -> 140 samples/s); flush them to zero while training only,
        # since the setting is process-wide.
        torch.set_flush_denormal(True)
        try:
            with StopOnSignal() as self._stop:  # Ctrl-C: checkpoint at the step boundary, exit
                return self._fit()
        finally:
            torch.set_flush_denormal(False)

    def _fit(self) -> dict[str, float]:
        cfg = self.config.train
        if self.step == 0:
            self._start_run()
        self.hooks.hook.on_train_start(trainer=self)
        batches = self._batches()
        # resumed: replay the stream of global batches to where it stopped
        for _ in range(self.samples_before // cfg.batch_size):
            next(batches)
        last_eval: dict[str, float] = {}
        progress = _Progress(cfg.steps, enabled=not self.quiet)  # None: no known total
        # a resumed run continues its clock: elapsed_s and max_time_s count all segments
        t0 = time.perf_counter() - self.elapsed_before
        # the speed window starts now, not at t0, which a resume moves into the past
        window_t, window_samples = time.perf_counter(), 0
        last_checkpoint_t = window_t
        self._t0 = t0
        deadline = t0 + cfg.max_time_s if cfg.max_time_s else float("inf")
        while not self.budget_spent():
            # every rank stops (or checkpoints) when any rank's signal or clock says so
            signum, late = self.dist.agree(self._stop.signum or 0, time.perf_counter() > deadline)
            if signum:
                self._stop_on_signal(signum)
            if late:
                self._settle_nonfinite()
                if not self.quiet:
                    print(f"time limit of {cfg.max_time_s:.0f} s reached at step {self.step}")
                last_eval = self.evaluate()
                self._log(
                    {
                        "step": self.step,
                        "stopped": "time limit",
                        "elapsed_s": time.perf_counter() - t0,
                        **self._spent(),
                        **{f"eval/{k}": v for k, v in last_eval.items()},
                    }
                )
                break
            self.model.train()
            metrics = self._train_step(batches)
            self.step += 1
            kill_point("step")  # PONDERKIT_KILL_AT=step@N: the tests' kill -9 after step N
            window_samples += cfg.batch_size
            stopped = self.budget_spent()
            self.hooks.hook.on_step_end(trainer=self, step=self.step, metrics=metrics)
            self._set_lr()
            if self.step % cfg.log_every == 0 or stopped:
                self._settle_nonfinite()
                now = time.perf_counter()
                record = {
                    "step": self.step,
                    **self.dist.mean(_floats(metrics)),
                    "lr": self.optimizer.param_groups[0]["lr"],
                    "samples_per_s": window_samples / max(now - window_t, 1e-9),
                    "elapsed_s": now - t0,
                    **self._spent(),
                }
                if cfg.nonfinite == "skip":
                    record["nonfinite_skipped"] = self.nonfinite_skipped
                window_t, window_samples = now, 0
                if cfg.eval_every and self.step % cfg.eval_every == 0 or stopped:
                    last_eval = self.evaluate()
                    record.update({f"eval/{k}": v for k, v in last_eval.items()})
                if stopped:
                    record["stopped"] = stopped
                self._log(record)
                progress.update(self.step, record)
            now = time.perf_counter()
            due_s = cfg.checkpoint_every_s and now - last_checkpoint_t >= cfg.checkpoint_every_s
            (due_s,) = self.dist.agree(bool(due_s)) if cfg.checkpoint_every_s else (0,)
            if (cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0) or due_s:
                self.checkpoint(f"step_{self.step:07d}")
                last_checkpoint_t = time.perf_counter()
        progress.close()
        self._settle_nonfinite()
        if self.keeps_run:
            self.checkpoint("final")
        return last_eval

    def _train_step(self, batches: Iterator[Batch]) -> dict[str, Any]:
        """One optimizer step of the schedule, counting the fresh samples it drew and the
        FLOPs it spent.

        A schedule reports ``fresh_samples`` (deep supervision: the slots it refilled) or
        draws one fresh batch (``train.batch_size``). FLOPs are counted by torch's
        FlopCounterMode, forward and backward, on a replay of the step about to run
        (:func:`~ponderkit.engine.flops.count_step_flops`, which leaves training unchanged) at
        the first step of a segment and every ``train.flops_every`` steps; each step between
        counts the latest measurement. The
        built-in schedules run the same work every step (deep supervision one supervision
        step of a full batch, the unrolling schedules every step to ``max_steps``); what varies
        is the routed share (a top-any router's active experts), which the measurements
        follow."""
        every = self.config.train.flops_every
        if every and (not self.flops_per_step or self.step % every == 0):
            flops, batches = count_step_flops(self, batches)
            # every rank counts its share of the global batch: the step costs their sum
            self.flops_per_step = self.dist.sum_totals({"flops": flops}, 0)[0]["flops"]
        with self.dist.counting(self.model):
            metrics = self.schedule.train_step(self.model, batches, self)
        fresh = metrics.pop("fresh_samples", None)
        if fresh is None:  # one fresh batch (the global one, over all ranks)
            self.samples += self.config.train.batch_size
        else:  # this rank's slots refilled: summed over the ranks
            self.samples += int(self.dist.sum_totals({"fresh": float(fresh)}, 0)[0]["fresh"])
        self.flops += self.flops_per_step
        return metrics

    def _spent(self) -> dict[str, float]:
        """What the run has spent so far: fresh samples, epochs of them, training FLOPs."""
        out: dict[str, float] = {"samples": self.samples}
        if self.config.train.flops_every:
            out["flops"] = self.flops
        size = self.task.train_size if isinstance(self.task, FixedTrainingSet) else None
        if size:
            out["epoch"] = self.samples / size
        return out

    def _stop_on_signal(self, signum: int) -> None:
        import signal

        name = signal.Signals(signum).name
        where = self.checkpoint(f"step_{self.step:07d}") if self.step else None
        saved = f"; checkpoint {where}, continue with --resume" if where else ""
        if self.dist.is_main:
            print(f"{name} at step {self.step}{saved}", file=sys.stderr, flush=True)
        raise Interrupted(signum, f"{name} at step {self.step}")

    def restore(self, checkpoint: Path) -> None:
        """Continue from ``checkpoint``: weights, optimizer, schedule and callback state, RNG,
        step; metrics logged after that step are dropped so none is written twice."""
        from .runs import load_checkpoint

        _, state = load_checkpoint(checkpoint)
        self.model.load_state_dict(state["train_weights"])
        self.optimizer.load_state_dict(state["optimizer"])
        schedule = self.dist.split_samples(
            state["schedule"], state.get("per_sample"), self.config.train.batch_size
        )
        self.schedule.load_state_dict(_to_device(schedule, self.device))
        self.hooks.load_state_dicts([_to_device(cb, self.device) for cb in state["callbacks"]])
        rng = state["rng"]
        torch.set_rng_state(rng["torch"])
        n = rng["numpy"]  # stored as tensors and numbers: weights_only loads no numpy arrays
        np.random.set_state(
            ("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"])
        )
        random.setstate(rng["python"])
        self.step = state["step"]
        self.samples_before = int(state.get("samples", self.step * self.config.train.batch_size))
        self.samples = int(state.get("fresh_samples", 0))
        self.flops = float(state.get("flops", 0.0))
        self.flops_per_step = float(state.get("flops_per_step", 0.0))
        self.nonfinite_skipped = int(state.get("nonfinite_skipped", 0))
        self.elapsed_before = float(state.get("elapsed_s", 0.0))
        self._set_lr()
        if self.metrics_log:
            self.metrics_log.truncate_after(self.step)

    def _batches(self) -> Iterator[Batch]:
        stream = self.task.train_batches(self.config.train.batch_size, self.config.seed)
        for batch in self.dist.shard(stream):
            yield self.to_device(batch)

    def evaluate(self, early_exit: bool = False) -> dict[str, float]:
        """Token and exact accuracy and mean steps on the task's held-out set, with the
        evaluation weights (EMA's where a callback keeps them).

        Where a callback swaps in weights of its own (``ema``), both are evaluated: the plain
        keys hold the evaluation weights' metrics (the run's primary ones), ``raw/<key>`` the
        trained weights' and ``<callback>/<key>`` (``ema/exact_acc``) the swapped-in ones, so
        a short run is not judged by how far its average lags alone."""
        swapped = self.hooks.swapping()
        puzzles = {"": PuzzleOutcomes(), "raw": PuzzleOutcomes()}  # per-puzzle, for reports
        with self.eval_weights():
            result = self._evaluate(early_exit, puzzles[""])
        if not swapped:
            write_puzzle_outcomes(self.run_dir, self.step, {"": puzzles[""]})
            return result
        raw = self._evaluate(early_exit, puzzles["raw"])
        write_puzzle_outcomes(self.run_dir, self.step, puzzles)
        label = "+".join(swapped)
        return {
            **result,
            **{f"raw/{k}": v for k, v in raw.items()},
            **{f"{label}/{k}": v for k, v in result.items()},
        }

    def _evaluate(self, early_exit: bool, puzzles: PuzzleOutcomes | None = None) -> dict:
        return evaluate(
            self.model,
            self.task,
            batch_size=self.config.train.eval_batch_size,
            device=self.device,
            precision=self.config.train.precision,
            early_exit=early_exit,
            dist=self.dist,
            puzzles=puzzles,
        )

    def eval_weights(self) -> contextlib.AbstractContextManager:
        """The callbacks' evaluation weights (EMA's) swapped in, restored on exit."""
        return self.hooks.eval_weights(self)

    # -- run directory ---------------------------------------------------------------------
    def _start_run(self) -> None:
        if not self.run_dir:
            return
        write_text_atomic(self.run_dir / "config.yaml", dump(unstructure(self.config)))
        plugins = []
        for _, spec in iter_specs(self.config):
            origin = self.registry.get(spec.kind, spec.name).origin
            plugins.append((origin.plugin, origin.version))
        write_meta(
            self.run_dir,
            seed=self.config.seed,
            device=str(self.device),
            plugins=plugins,
            extra={
                "parameters": parameter_count(self.model),
                # the plugin code trained with: `ablate` refuses a run whose plugin changed since
                "plugin_sources": plugin_sources(self.config, self.registry),
                **({"world_size": self.dist.world_size} if self.dist.active else {}),
            },
        )

    def _log(self, record: dict[str, Any]) -> None:
        if self.metrics_log:
            self.metrics_log.write(record)
        self.hooks.hook.on_log(trainer=self, record=record)  # loggers mirror the record

    def checkpoint(self, name: str) -> Path | None:
        """Save the run's state as ``checkpoints/<name>``; under ``torchrun`` every rank calls
        it (rank 0 writes). The state does not depend on the world size: per-sample schedule
        state holds the global batch, the data position counts global samples."""
        if not self.keeps_run:
            return None
        self._settle_nonfinite()  # never a checkpoint after a non-finite step it stops at
        batch = self.config.train.batch_size
        schedule, per_sample = self.dist.gather_samples(
            self.schedule.state_dict(), batch // self.dist.world_size
        )
        if not self.run_dir:  # not rank 0
            return None
        with self.eval_weights():  # clone: the swapped-in tensors are restored in place
            weights = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        state = {
            "step": self.step,
            "samples": self.step * batch,
            "fresh_samples": self.samples,
            "flops": self.flops,
            "flops_per_step": self.flops_per_step,
            "nonfinite_skipped": self.nonfinite_skipped,
            "elapsed_s": (time.perf_counter() - self._t0) if self._t0 is not None else 0.0,
            "train_weights": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "schedule": schedule,
            "per_sample": per_sample,
            "callbacks": self.hooks.state_dicts(),
            "rng": {
                "torch": torch.get_rng_state(),
                "numpy": _numpy_rng_state(),
                "python": random.getstate(),
            },
        }
        path = save_checkpoint(self.run_dir, name, weights, state)
        prune(self.run_dir, self.config.train.keep_checkpoints)
        return path


def defers_nonfinite(optimizer: torch.optim.Optimizer, owned: list[Any]) -> bool:
    """Whether the trainer leaves the non-finite check of each step on the device
    (:class:`NonFiniteTally`): ``optimizer`` skips a step itself when handed a ``found_inf``
    of 1, as torch's fused Adam/AdamW (and SGD, Adagrad) do for GradScaler (they say so with
    ``_step_supports_amp_scaling``), and no callback updates parameters of its own (``owned``:
    such an update would apply the non-finite gradient outside the optimizer). Every other
    optimizer (the hand-written ones, AdamW on CPU) keeps the per-step host check."""
    return bool(getattr(optimizer, "_step_supports_amp_scaling", False)) and not owned


class NonFiniteTally:
    """Non-finite steps counted on the device, for an optimizer that skips a step itself.

    Each step :meth:`record` adds the step's flag (no host sync) and keeps the first
    non-finite step since the last read: its number, whether the loss (else the gradient norm)
    was non-finite, and that value. :meth:`read` fetches them (one host sync) and starts
    counting afresh; the trainer reads only where it syncs anyway: logging every
    ``train.log_every`` steps, evaluating, checkpointing, at the end of the run."""

    def __init__(self, device: torch.device):
        self.count = torch.zeros((), dtype=torch.int64, device=device)
        self.first_step = torch.zeros((), dtype=torch.int64, device=device)
        self.first_loss = torch.zeros((), dtype=torch.bool, device=device)
        self.first_value = torch.zeros((), dtype=torch.float32, device=device)

    def record(self, bad: Tensor, step: int, loss_bad: Tensor, value: Tensor) -> None:
        """Step ``step`` was non-finite where ``bad``; ``loss_bad``: its loss was."""
        first = bad & (self.count == 0)
        number = torch.full((), step, dtype=torch.int64, device=self.count.device)
        self.first_step = torch.where(first, number, self.first_step)
        self.first_loss = torch.where(first, loss_bad, self.first_loss)
        self.first_value = torch.where(first, value.to(torch.float32), self.first_value)
        self.count += bad

    def read(self) -> tuple[int, int, str, float] | None:
        """(steps, first step, "loss" or "gradient norm", its value) since the last read, or
        None when every step was finite; the count starts again at 0."""
        count = int(self.count)
        if not count:
            return None
        self.count.zero_()
        what = "loss" if bool(self.first_loss) else "gradient norm"
        return count, int(self.first_step), what, float(self.first_value)


def resume_or_start(
    config: ExperimentConfig,
    run_dir: Path,
    registry: Any,
    quiet: bool = False,
    extend: bool = False,
) -> Trainer | None:
    """A trainer continuing ``run_dir`` from its newest intact checkpoint (None when it already
    finished); the caller holds the directory's lock (:class:`~ponderkit.engine.runlock.RunLock`).

    A directory that does not exist or is empty starts a new run; one holding a different
    config is refused, so a resumed run never mixes two experiments. Under ``torchrun`` every
    rank calls this: rank 0 inspects and repairs the directory, then tells the others which
    checkpoint to load."""
    from ..contract.errors import InputError
    from ..contract.experiment import load_experiment
    from . import recovery
    from .runlock import is_empty_run_dir
    from .runs import create_run_dir

    run_dir = Path(run_dir)
    dist = distributed.current()

    def inspect() -> bool:
        if is_empty_run_dir(run_dir):
            return True
        saved = run_dir / "config.yaml"
        if not saved.is_file():
            raise InputError(f"{run_dir} is not a run directory (no config.yaml); cannot resume")
        if load_experiment(saved, registry=registry).config != config:
            raise InputError(
                f"{run_dir} holds a run of a different config; resume it with the "
                f"same file and overrides, or choose another --out"
            )
        return False

    if dist.from_main(inspect):
        trainer = Trainer(config, registry, run_dir, quiet=quiet)
        dist.from_main(lambda: create_run_dir(run_dir))
        return trainer
    trainer = Trainer(config, registry, run_dir, quiet=quiet)
    chosen = dist.from_main(lambda: recovery.resume(trainer, run_dir))
    if not dist.is_main and chosen is not None:
        trainer.restore(chosen)
    # a finished run stays finished, unless ``extend`` raised its budget (run --extend)
    if chosen is not None and Path(chosen).name == "final" and not extend:
        return None
    if trainer.budget_spent():  # killed inside the final write: finish it, idempotently
        trainer.checkpoint("final")
        if dist.is_main:  # a repair: said even with --quiet
            print(f"warning: {run_dir}: training had finished; wrote its missing final "
                  f"checkpoint from {Path(chosen).name}", file=sys.stderr, flush=True)  # fmt: skip
        return None
    return trainer


def _numpy_rng_state() -> dict[str, Any]:
    _, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "keys": torch.from_numpy(keys.astype(np.int64)),
        "pos": int(pos),
        "has_gauss": int(has_gauss),
        "gauss": float(gauss),
    }


def _to_device(obj: Any, device: torch.device) -> Any:
    if isinstance(obj, Tensor):
        return obj.to(device)
    if isinstance(obj, dict):
        return {k: _to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_to_device(v, device) for v in obj)
    return obj


def _floats(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items()}


class _Progress:
    """A tqdm bar on a TTY; plain log lines otherwise (CI, pipes, make demo)."""

    def __init__(self, total: int, enabled: bool):
        self.enabled = enabled
        self.bar = None
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="step", dynamic_ncols=True)
        self.last = 0

    def update(self, step: int, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        shown = {
            k: record[k]
            for k in ("loss", "token_acc", "exact_acc", "eval/exact_acc", "eval/token_acc")
            if k in record
        }
        text = " ".join(f"{k}={v:.4f}" for k, v in shown.items())
        if self.bar is not None:
            self.bar.update(step - self.last)
            self.bar.set_postfix_str(text)
            if "eval/exact_acc" in record:
                self.bar.write(f"step {step}: {text}")
        else:
            print(
                f"step {step:>6}: {text} ({record.get('samples_per_s', 0):.0f} samples/s)",
                flush=True,
            )
        self.last = step

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
