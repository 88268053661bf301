"""Running an ablation grid: every variant x seed into ``<out>/<variant>/seed<k>/``.

Each run directory is an ordinary run directory. Re-running skips finished runs (those with a
``final`` checkpoint and their ``halting.json``), resumes interrupted ones from their latest
checkpoint (metrics after it are dropped, so no step is logged twice) and starts the rest.
With ``jobs > 1`` each run is a subprocess ``python -m ponderkit ablate FILE --worker --only
VARIANT/seedK``: on CPU with ``OMP_NUM_THREADS = cpus // jobs`` (unless the config sets
``train.threads``); on CUDA up to ``jobs`` at once over the visible GPUs, several to a GPU where
their measured memory fits (:mod:`~ponderkit.lab.packing`), through ``CUDA_VISIBLE_DEVICES``.
With ``nproc > 1`` each run is data-parallel over ``nproc`` processes: its worker starts through
``python -m torch.distributed.run --standalone --nproc_per_node nproc`` with ``nproc`` GPUs of
its own (or a share of the CPU cores, gloo).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..contract.errors import InputError, PonderkitError, suggestion
from ..engine.runs import write_json_atomic, write_text_atomic
from .ablation import Ablation, Run
from .progress import ProgressWatcher
from .run_analysis import analyse_run, read_json

Say = Callable[[str], None]


def prepare(ablation: Ablation, out: Path) -> list[Run]:
    """The runs of ``ablation``, its directory made (a FLOPs budget is ``train.flops``: each
    run counts what it spends, so nothing is measured ahead)."""
    out.mkdir(parents=True, exist_ok=True)
    return ablation.runs()


def write_plan(ablation: Ablation, runs: Sequence[Run], out: Path) -> None:
    """``ablation.yaml`` (the file as run) and ``ablation.json`` (what reports read)."""
    write_text_atomic(out / "ablation.yaml", ablation.path.read_text("utf-8"))
    write_json_atomic(out / "ablation.json", ablation.plan())


def select(runs: list[Run], only: Sequence[str] | None) -> list[Run]:
    """The runs named by ``--only`` (a variant or a ``variant/seedK``), all without it."""
    if not only:
        return runs
    keys = [r.key for r in runs] + list(dict.fromkeys(r.variant for r in runs))
    for name in only:
        if name not in keys:
            hint = suggestion(name, keys) or "variants: " + ", ".join(keys[len(runs) :])
            raise InputError(f"--only {name!r} is no variant or run here ({hint})")
    return [r for r in runs if r.key in only or r.variant in only]


def run_state(run: Run, run_dir: Path, registry: Any) -> str:
    """``new``, ``resume``, ``analyse`` (trained, halting.json missing) or ``done``.

    Raises when the directory holds a run of another config (the ablation file changed)."""
    from ..contract.experiment import load_experiment
    from ..engine.runlock import is_empty_run_dir

    if is_empty_run_dir(run_dir):
        return "new"
    saved = run_dir / "config.yaml"
    if not saved.exists():
        raise InputError(f"{run.key}: {run_dir} is not empty and not a run directory")
    if load_experiment(saved, registry=registry).config != run.config:
        raise InputError(
            f"{run.key}: {run_dir} holds a run of a different config (the ablation or base "
            "file changed since it ran); move it away or choose another --out"
        )
    _refuse_stale(run, run_dir, registry)
    if (run_dir / "halting.json").exists():  # written last, from the final checkpoint
        return "done"
    if run.holdout is not None and (run_dir / "validation.json").exists():  # a tuning run
        return "done"
    from ..engine.runs import checkpoint_problem

    # a damaged final is resumed: the resume sets it aside and writes it again
    final = checkpoint_problem(run_dir / "checkpoints" / "final") is None
    return "analyse" if final else "resume"


def _refuse_stale(run: Run, run_dir: Path, registry: Any) -> None:
    """Refuse a run trained with a plugin whose source changed since (an editable install
    edited): its results would be counted as the edited code's."""
    import json

    from ..engine.provenance import plugin_sources, stale_plugins

    try:
        recorded = json.loads((run_dir / "meta.json").read_text()).get("plugin_sources", {})
    except (OSError, ValueError):
        return  # not started far enough to say (resumed or retrained as before)
    stale = stale_plugins(recorded, plugin_sources(run.config, registry))
    if stale:
        raise InputError(
            f"{run.key}: {run_dir} was trained with plugin {stale[0]} as it was before its "
            "source changed; move the run away to train it again with the plugin as it is now"
        )


def train_run(run: Run, run_dir: Path, registry: Any, time_budget: float | None = None) -> None:
    """Train ``run`` into ``run_dir`` from scratch or from its newest intact checkpoint, then
    analyse; the run directory is locked throughout (a second writer is refused)."""
    import contextlib

    from ..engine.distributed import init_from_env
    from ..engine.runlock import RunLock
    from ..engine.train import resume_or_start

    # under torchrun (ablate --nproc) every rank trains; rank 0 locks, inspects and analyses
    with init_from_env(run.config.train.device) as dist, contextlib.ExitStack() as held:

        def lock_and_inspect() -> str:
            run_dir.mkdir(parents=True, exist_ok=True)
            held.enter_context(RunLock(run_dir))
            return run_state(run, run_dir, registry)  # again, now that no one else can write

        state = dist.from_main(lock_and_inspect)
        if state == "done":
            return
        if state in ("new", "resume"):
            trainer = resume_or_start(run.config, run_dir, registry, quiet=True)
            if trainer is not None:
                if run.holdout is not None:  # a tuning run: it evaluates on its validation split
                    trainer.task = trainer.task.holdout(run.holdout)
                trainer.fit()
            del trainer
        if dist.is_main and run.holdout is not None:
            from .tune import write_validation

            write_validation(run_dir)  # no analysis: that would read the evaluation set
        elif dist.is_main:
            analyse_run(run_dir, registry)


def run_grid(
    ablation: Ablation,
    runs: Sequence[Run],
    out: Path,
    registry: Any,
    *,
    jobs: int = 1,
    nproc: int = 1,
    child_argv: Sequence[str] = (),
    child_env: dict[str, str] | None = None,
    say: Say = print,
    plan_runs: Sequence[Run] | None = None,
    memory_per_run: float | None = None,
    progress_s: float = 0.0,
) -> list[str]:
    """Run every run of ``runs`` not finished yet; returns the keys of runs that failed.

    Every existing run directory is checked first: one holding another config stops the grid
    before anything runs. Then ``ablation.json`` describes ``plan_runs`` (every run, when the
    grid runs only some), unless it is None (a worker running one run for its parent).
    ``memory_per_run`` (GiB) replaces the memory probes of a packed CUDA grid. Every
    ``progress_s`` seconds (0: never) each running run's progress is said
    (:mod:`~ponderkit.lab.progress`)."""
    t0 = time.perf_counter()

    def log(text: str) -> None:
        say(f"[{time.perf_counter() - t0:7.1f} s] {text}")

    todo, problems = [], []
    for run in runs:
        try:
            state = run_state(run, run.directory(out), registry)
        except PonderkitError as exc:
            problems.append(str(exc))
            continue
        if state == "done":
            log(f"skip     {run.key} (finished)")
        else:
            todo.append((run, state))
    if problems:
        raise InputError("\n".join(problems))
    if plan_runs is not None:
        write_plan(ablation, plan_runs, out)
    time_budget = ablation.budget.time_s
    watcher = ProgressWatcher(log, progress_s, total=len(runs), finished=len(runs) - len(todo))
    if nproc <= 1 and (jobs <= 1 or len(todo) <= 1):
        with watcher:
            return _in_process(todo, out, registry, time_budget, log, watcher)
    if nproc > 1:
        child_argv = distributed_command(child_argv, nproc)
        child_env = {**(child_env or {}), "PYTHONSAFEPATH": "1"}  # torchrun starts no -P
    placer = make_placer(
        jobs, [r for r, _ in todo], child_argv, child_env or {}, log, nproc, memory_per_run
    )
    with watcher:
        return _subprocesses(
            todo, out, jobs, child_argv, child_env or {}, log, nproc, placer, watcher, time_budget
        )


def _in_process(
    todo: list,
    out: Path,
    registry: Any,
    time_budget: float | None,
    log,
    watcher: ProgressWatcher,
) -> list:
    failed = []
    for run, state in todo:
        run_dir = run.directory(out)
        log(_started(state, run, run_dir))
        started = time.perf_counter()
        watcher.watch(run.key, run_dir, run.config.train, time_budget)
        try:
            train_run(run, run_dir, registry, time_budget)
        except KeyboardInterrupt:
            log(f"interrupted {run.key}; run the same command again to resume it")
            raise
        except Exception as exc:  # one broken run must not stop the grid
            log(f"FAILED   {run.key}: {type(exc).__name__}: {exc}")
            failed.append(run.key)
            continue
        finally:
            watcher.forget(run.key)
        log(f"finished {run.key} in {time.perf_counter() - started:.1f} s{_result(run_dir)}")
    return failed


def _subprocesses(
    todo: list,
    out: Path,
    jobs: int,
    child_argv: Sequence[str],
    child_env: dict[str, str],
    log,
    nproc: int,
    placer: Any,
    watcher: ProgressWatcher,
    time_budget: float | None,
) -> list:
    (out / "logs").mkdir(exist_ok=True)
    pending, running, failed = list(todo), {}, []
    try:
        while pending or running:
            i = 0
            while i < len(pending):  # in order; a later, smaller run may fit where one did not
                got = placer.place(pending[i][0])
                if got is None:
                    i += 1
                    continue
                handle, slot_env = got
                run, state = pending.pop(i)
                logfile = out / "logs" / f"{run.variant}-seed{run.seed}.log"
                logfile.parent.mkdir(parents=True, exist_ok=True)  # tune/<arm>/ for tuning runs
                env = {**os.environ, **child_env, **slot_env, PARENT_ENV: str(os.getpid())}
                with logfile.open("a") as f:
                    cmd = [*child_argv, "--only", run.key]
                    proc = subprocess.Popen(
                        cmd,
                        stdout=f,
                        stderr=subprocess.STDOUT,
                        env=env,
                        preexec_fn=_die_with_parent if nproc > 1 else None,
                    )
                running[proc] = (run, handle, time.perf_counter(), logfile)
                watcher.watch(run.key, run.directory(out), run.config.train, time_budget)
                where = " ".join(f"{k}={v}" for k, v in slot_env.items())
                if isinstance(handle, tuple):  # a GPU: (id, bytes needed)
                    basis = getattr(placer, "basis", "measured")  # the GPU packer's, not a plugin's
                    where += f", needs {handle[1] / 2**30:.2f} GiB ({basis})"
                log(f"{_started(state, run, run.directory(out))} ({where}; log {logfile})")
            time.sleep(0.2)
            for proc in [p for p in running if p.poll() is not None]:
                run, handle, started, logfile = running.pop(proc)
                watcher.forget(run.key)
                placer.release(handle)
                took = time.perf_counter() - started
                if proc.returncode == 0:
                    log(f"finished {run.key} in {took:.1f} s{_result(run.directory(out))}")
                else:
                    tail = logfile.read_text("utf-8", errors="replace").strip().splitlines()[-3:]
                    detail = " | ".join(tail)
                    log(f"FAILED   {run.key} (exit {proc.returncode}; {logfile}): {detail}")
                    failed.append(run.key)
    except KeyboardInterrupt:
        for proc in running:
            proc.terminate()
        for proc in running:
            proc.wait()
        log("interrupted; run the same command again to resume")
        raise
    return failed


def make_placer(
    jobs: int,
    runs: Sequence[Run],
    child_argv: Sequence[str],
    child_env: dict[str, str],
    log,
    nproc: int = 1,
    memory_per_run: float | None = None,
) -> Any:
    """CPU (or ``nproc > 1``): ``jobs`` fixed slots (:func:`_device_slots`). CUDA: runs packed
    onto the visible GPUs by their measured memory (:mod:`~ponderkit.lab.packing`), every
    distinct config probed first, or by ``memory_per_run`` GiB each when the user gives it."""
    import torch

    from .packing import GpuPacker, MemoryProbe, Slots, free_memory, visible_gpus

    if nproc > 1 or not torch.cuda.is_available():
        return Slots([env for _, env in _device_slots(jobs, nproc)])
    gpus = visible_gpus()
    argv = list(child_argv)
    plugin_args = [a for i, a in enumerate(argv) if a == "--plugin" or argv[i - 1] == "--plugin"]
    if memory_per_run is not None:
        given = int(memory_per_run * 2**30)
        need: Callable[[Any], int] = lambda run: given  # noqa: E731
        log(f"memory   {memory_per_run:g} GiB per run (--memory-per-run; not probed)")
    else:
        need = probe = MemoryProbe(gpus[0], child_env, plugin_args)
        probe.probe_all(runs)  # before any run holds memory, so that the probes see an idle GPU
        for digest, bytes_ in probe.cache.items():
            log(f"memory   config {digest}: {bytes_ / 2**30:.2f} GiB per run (probe peak + margin)")
    free = free_memory(gpus)
    log("free     " + ", ".join(f"GPU {g}: {b / 2**30:.1f} GiB" for g, b in free.items()))
    packer = GpuPacker(free, jobs, need)
    packer.basis = "given" if memory_per_run is not None else "measured"
    return packer


def _device_slots(jobs: int, nproc: int = 1) -> list[tuple[int, dict[str, str]]]:
    """One environment per concurrent job: ``nproc`` GPUs each when CUDA has them, else a
    share of the CPU threads (each of a job's ``nproc`` processes gets its share)."""
    import torch

    if torch.cuda.is_available():
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        ids = visible.split(",") if visible else [str(i) for i in range(torch.cuda.device_count())]
        if len(ids) < nproc:
            raise InputError(
                f"--nproc {nproc}: each run needs {nproc} GPUs and {len(ids)} are visible"
            )
        groups = [ids[i : i + nproc] for i in range(0, len(ids) - nproc + 1, nproc)]
        return [(i, {"CUDA_VISIBLE_DEVICES": ",".join(g)}) for i, g in enumerate(groups[:jobs])]
    threads = max(1, (os.cpu_count() or 1) // (jobs * nproc))
    return [(i, {"OMP_NUM_THREADS": str(threads)}) for i in range(jobs)]


def _started(state: str, run: Run, run_dir: Path) -> str:
    """The progress line of a run about to start: ``start``, ``resume`` or ``analyse``."""
    if state == "resume":
        saved = sorted((run_dir / "checkpoints").glob("step_*"))
        step = int(saved[-1].name[5:]) if saved else 0
        return f"resume   {run.key} (from step {step})"
    return f"{'start' if state == 'new' else 'analyse':<8} {run.key}"


def _result(run_dir: Path) -> str:
    h = read_json(run_dir / "halting.json")
    if "exact_acc_all_steps" not in h:
        return ""
    return (
        f": exact acc {h['exact_acc_all_steps']:.4f}; with early exit {h['exact_acc']:.4f} "
        f"at {h['mean_steps']:.2f} steps"
    )


def worker_command(file: Path, out: Path, plugin_args: Sequence[str]) -> list[str]:
    """The command a subprocess job runs (``--only RUN`` is appended per run).

    ``-P`` keeps the working directory off ``sys.path``: a folder named ``ponderkit`` there
    would otherwise be imported in place of the installed package."""
    return [sys.executable, "-P", "-m", "ponderkit", *plugin_args, "ablate", str(file),
            "--out", str(out), "--worker"]  # fmt: skip


def distributed_command(worker: Sequence[str], nproc: int) -> list[str]:
    """``worker`` (``python -P -m ponderkit ...``) launched as ``nproc`` data-parallel ranks;
    ``--standalone`` takes a free local port, so concurrent runs do not collide."""
    module = list(worker).index("-m")
    return [*worker[:module], "-m", "torch.distributed.run", "--standalone",
            "--nproc_per_node", str(nproc), *worker[module:]]  # fmt: skip


PARENT_ENV = "PONDERKIT_PARENT_PID"


def worker_env(plugin_modules: Sequence[str]) -> dict[str, str]:
    """``PYTHONPATH`` for workers: where this process found each ``--plugin`` module (``-P``
    hides the working directory, where an ad-hoc plugin module often lives)."""
    folders = []
    for name in plugin_modules:
        module = sys.modules.get(name.split(".")[0])
        file = getattr(module, "__file__", None)
        if not file:
            continue
        here = Path(file).resolve().parent
        folders.append(str(here.parent if Path(file).name == "__init__.py" else here))
    if not folders:
        return {}
    old = os.environ.get("PYTHONPATH")
    return {"PYTHONPATH": os.pathsep.join(dict.fromkeys([*folders, *([old] if old else [])]))}


def _die_with_parent() -> None:
    """In a child before it execs: SIGTERM when the parent dies (Linux; elsewhere nothing)."""
    import signal

    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM), 0, 0, 0)
        except (OSError, AttributeError):
            pass


def die_with_parent(poll_s: float = 1.0) -> None:
    """Make this worker stop when the ``ablate`` that started it dies, even by ``kill -9``.

    Linux delivers SIGTERM on the parent's death (``prctl(PR_SET_PDEATHSIG)``); a thread that
    polls the parent pid covers other systems and a parent that died before the prctl. The
    SIGTERM makes training checkpoint at its next step and exit, so nothing runs orphaned."""
    import signal
    import threading

    parent = int(os.environ.get(PARENT_ENV, "0") or 0)
    if parent and "TORCHELASTIC_RUN_ID" in os.environ:
        # a rank of `ablate --nproc`: its parent is the torchrun agent, which dies with the
        # ablate process (PR_SET_PDEATHSIG, set when it was started) and stops its ranks
        parent = os.getppid()
    if not parent:
        return
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, int(signal.SIGTERM), 0, 0, 0)  # 1: PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_s)
        os.kill(os.getpid(), signal.SIGTERM)

    if os.getppid() != parent:  # already orphaned
        os.kill(os.getpid(), signal.SIGTERM)
    threading.Thread(target=watch, name="ponderkit-parent-watch", daemon=True).start()
