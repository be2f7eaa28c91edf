"""Launchers: where :class:`fvds.builder.worker.Worker` runs. One worker, three launchers.

- this process, on one device (the default);
- one process per device on this machine (``--devices cuda:0,cuda:1``), pulling jobs;
- Ray tasks (``--executor ray``), on a cluster at ``RAY_ADDRESS`` or a local Ray.

Sharding (``--shard i/N``, or a SLURM array / torchrun rank from the environment) picks which
jobs a process renders, before any launcher: job ``k`` of the plan (stage, then layer, then
batch) belongs to shard ``k mod N``. Consecutive jobs are neighbouring layers, so every shard
gets a similar mix of shallow (cheap) and deep (costly) jobs, and the rule needs nothing but
the config, which every machine reads alike.

Every launcher takes a job's lock before it is rendered and keeps it until the job's part (or
failure record) is written, so processes sharing a work area never render a job twice at the
same time; a job another process holds is waited for at the end, then taken over if that
process died. Launchers with several workers hand jobs out longest first (FLOPs to the layer
times units), so the last jobs of a build are short ones and workers finish together.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from fvds.builder.plan import Job, Plan, make_plan
from fvds.builder.render import resolve_device
from fvds.builder.workarea import FileLock, WorkArea
from fvds.builder.worker import Failed, Rendered, Worker, settle
from fvds.config import Config
from fvds.errors import BadInput, FvdsError

RAY_ATTEMPTS = 3  # tries of a job on Ray before it is recorded as failed


@dataclass(frozen=True)
class Shard:
    index: int
    count: int

    def select(self, jobs: Iterable[Job]) -> tuple[Job, ...]:
        return tuple(jobs)[self.index::self.count]

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def parse_shard(text: str, source: str = "--shard") -> Shard:
    """``i/N`` with 0 <= i < N."""
    index, sep, count = text.partition("/")
    try:
        shard = Shard(int(index), int(count)) if sep else None
    except ValueError:
        shard = None
    if shard is None or shard.count < 1:
        raise BadInput(f"{source} '{text}' must look like i/N with whole numbers, e.g. 0/4 for "
                       "the first of four shards.")
    if not 0 <= shard.index < shard.count:
        raise BadInput(f"{source} '{text}': the shard index must be 0 to {shard.count - 1} "
                       "(shards are numbered from 0).")
    return shard


def shard_from_env(env: Mapping[str, str] = os.environ) -> Shard | None:
    """The shard a scheduler gives this process: a SLURM array task, or a torchrun rank."""
    if "SLURM_ARRAY_TASK_ID" in env and "SLURM_ARRAY_TASK_COUNT" in env:
        # arrays may start anywhere (--array=1-8): the shard is the offset from the first task
        try:
            index = int(env["SLURM_ARRAY_TASK_ID"]) - int(env.get("SLURM_ARRAY_TASK_MIN", "0"))
        except ValueError:
            index = -1
        return parse_shard(f"{index}/{env['SLURM_ARRAY_TASK_COUNT']}",
                           "SLURM_ARRAY_TASK_ID/SLURM_ARRAY_TASK_COUNT (minus "
                           "SLURM_ARRAY_TASK_MIN; use a contiguous --array without a step)")
    if "RANK" in env and "WORLD_SIZE" in env:
        return parse_shard(f"{env['RANK']}/{env['WORLD_SIZE']}", "RANK/WORLD_SIZE")
    return None


def parse_devices(text: str) -> tuple[str, ...]:
    """``auto`` (every CUDA device, else the CPU) or a comma list such as ``cuda:0,cuda:1``
    or ``cpu,cpu``; each device must exist here."""
    if text.strip() == "auto":
        n = torch.cuda.device_count()
        return tuple(f"cuda:{i}" for i in range(n)) or ("cpu",)
    devices = tuple(d.strip() for d in text.split(","))
    kinds = set()
    for d in devices:
        if d in ("", "auto"):
            raise BadInput(f"--devices '{text}' must be 'auto' or a comma list of devices such "
                           "as cuda:0,cuda:1 or cpu,cpu.")
        try:
            kinds.add(resolve_device(d).type)
        except RuntimeError:  # torch.device() on a malformed name
            raise BadInput(f"--devices '{text}': '{d}' is not a device (cpu, cuda, cuda:N, "
                           "mps).") from None
    if len(kinds) > 1:
        raise BadInput(f"--devices '{text}' mixes kinds of device ({', '.join(sorted(kinds))}): "
                       "images rendered on different kinds differ slightly, so a build uses "
                       "one kind.")
    return devices


@dataclass(frozen=True)
class Launch:
    """Where and which jobs a build renders; the config says how."""
    executor: Literal["local", "ray"] = "local"
    devices: tuple[str, ...] = ()  # local: one process per device; () = render.device here
    shard: Shard | None = None  # only this shard's jobs, and no assembly

    def __post_init__(self) -> None:
        if self.executor not in ("local", "ray"):
            raise BadInput(f"--executor '{self.executor}' is not one of local, ray.")
        if self.executor == "ray" and self.devices:
            raise BadInput("--devices is for the local executor; with --executor ray, Ray "
                           "places jobs (one GPU each when the cluster has GPUs).")

    def check(self) -> None:
        """Fail on what is missing here (Ray) before a build writes anything."""
        if self.executor == "ray":
            _import_ray()


def launch_from_flags(executor: str = "local", shard: str | None = None,
                      devices: str | None = None, configured_device: str = "auto",
                      env: Mapping[str, str] = os.environ) -> Launch:
    """The command line's --executor, --shard and --devices as a :class:`Launch`.

    Without --shard, a local build takes its shard from a SLURM array or torchrun; under
    torchrun (LOCAL_RANK and WORLD_SIZE set) each rank renders on ``cuda:LOCAL_RANK`` unless
    devices are named.
    """
    picked = parse_shard(shard) if shard is not None else (
        shard_from_env(env) if executor == "local" else None)
    named = parse_devices(devices) if devices is not None else ()
    if (executor == "local" and not named and "LOCAL_RANK" in env and "WORLD_SIZE" in env
            and configured_device in ("auto", "cuda") and torch.cuda.is_available()):
        if not env["LOCAL_RANK"].isdigit():
            raise BadInput(f"LOCAL_RANK '{env['LOCAL_RANK']}' is not a GPU index (torchrun "
                           "sets 0, 1, ...).")
        named = parse_devices(f"cuda:{env['LOCAL_RANK']}")
    return Launch(executor, named, picked)  # type: ignore[arg-type]


@dataclass
class Tally:
    rendered: int = 0
    failed: dict[str, str] = field(default_factory=dict)  # job id -> error line
    elsewhere: int = 0  # found rendered by another process once locked


Advance = Callable[[Job], None]  # called once per job settled, for progress


def run(plan: Plan, work: WorkArea, jobs: list[Job], launch: Launch, advance: Advance,
        log: Callable[[str], None]) -> Tally:
    """Render ``jobs`` (none of them done yet) with the launch's executor.

    The first Ctrl-C lets the jobs in flight finish and be written, then raises
    KeyboardInterrupt; a second one stops at once.
    """
    with _StopOnInterrupt() as stop:
        if launch.executor == "ray":
            tally = _run_ray(plan, work, jobs, advance, stop, log)
        elif len(launch.devices) > 1:
            tally = _run_processes(plan, work, jobs, launch.devices, advance, stop)
        else:
            device = launch.devices[0] if launch.devices else plan.config.render.device
            tally = _run_here(plan, work, jobs, device, advance, stop)
    if stop.requested:
        raise KeyboardInterrupt
    return tally


class _StopOnInterrupt:
    """SIGINT (Ctrl-C) and SIGTERM (what SLURM sends before a preemption or the time limit, and
    torchrun on Ctrl-C) set a flag that launchers check between jobs, so the jobs in flight are
    finished and written; a second signal raises at once."""

    requested = False
    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __enter__(self) -> _StopOnInterrupt:
        self._old: dict = {}
        if threading.current_thread() is threading.main_thread():
            self._old = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS}
        return self

    def _handle(self, sig, _frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        again = "Ctrl-C again" if sig == signal.SIGINT else "signal again"
        # a signal handler must not take the console's lock: write to the descriptor
        os.write(2, f"\nStopping after the jobs in flight ({again} to stop now)...\n".encode())

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


WAIT = ()  # from _Dispatcher.take: only jobs other processes hold are left; ask again later
POLL_S = 0.5  # how often a job another process holds is tried again


class _Dispatcher:
    """Hands out groups of jobs in the given order, each job locked until it is settled.

    A job locked by another process is put aside and tried again once nothing else is left; a
    job that turns out rendered once locked is dropped (another process did it). Locks are
    only ever tried, never waited on in the kernel: a launcher waiting for another process's
    job while holding its own jobs' locks could deadlock with that process, and it must keep
    noticing its workers and Ctrl-C meanwhile.
    """

    def __init__(self, work: WorkArea, groups: Iterable[tuple[Job, ...]], advance: Advance,
                 tally: Tally, stop: _StopOnInterrupt):
        self.work, self.advance, self.tally, self.stop = work, advance, tally, stop
        self.pending = deque(groups)
        self.later: deque[Job] = deque()
        self.locks: dict[str, FileLock] = {}

    def take(self, block: bool = True) -> tuple[Job, ...] | None:
        """The next group to render, None when every job is settled (or Ctrl-C was pressed
        while waiting), or, with ``block=False``, :data:`WAIT` when only jobs another process
        holds are left. ``block`` is for callers with nothing in flight."""
        while self.pending:
            taken = [j for j in self.pending.popleft() if self._try(j)]
            if taken:
                return tuple(taken)
        while self.later:
            for _ in range(len(self.later)):
                job = self.later.popleft()
                if self._try(job):
                    return (job,)
            if not self.later:
                break
            if not block:
                return WAIT
            if self.stop.requested:
                return None
            time.sleep(POLL_S)
        return None

    def _try(self, job: Job) -> bool:
        """Lock ``job`` if it still needs rendering; put it aside if another process holds it."""
        lock = self.work.job_lock(job)
        if not lock.acquire(wait=False):
            self.later.append(job)
            return False
        if self.work.is_done(job):
            lock.release()
            self.tally.elsewhere += 1
            self.advance(job)
            return False
        self.work.clear_temp(job)
        self.locks[job.id] = lock
        return True

    def settle(self, outcome: Rendered | Failed) -> None:
        """Write an outcome here, count it, release the job's lock."""
        try:
            error = settle(self.work, outcome)
        except BaseException:
            self.locks.pop(outcome.job.id).release()
            raise
        self.settled(outcome.job, error)

    def settled(self, job: Job, error: str | None) -> None:
        """Count a job whose outcome is written (here or by a worker process); release it."""
        if error is None:
            self.tally.rendered += 1
        else:
            self.tally.failed[job.id] = error
        self.locks.pop(job.id).release()
        self.advance(job)

    @property
    def exhausted(self) -> bool:
        return not (self.pending or self.later)

    def close(self) -> None:
        for lock in self.locks.values():
            lock.release()
        self.locks.clear()


def longest_first(plan: Plan, jobs: Iterable[Job]) -> list[Job]:
    """Jobs by decreasing cost (FLOPs to the layer x units); ties keep plan order."""
    flops = plan.layer_flops
    return sorted(jobs, key=lambda j: -flops[j.layer.name] * len(j.units))


# -- this process --------------------------------------------------------------------------

def _run_here(plan: Plan, work: WorkArea, jobs: list[Job], device: str, advance: Advance,
              stop: _StopOnInterrupt) -> Tally:
    tally = Tally()
    worker = Worker(plan, resolve_device(device))
    dispatch = _Dispatcher(work, [(j,) for j in jobs], advance, tally, stop)  # plan order
    try:
        while not stop.requested and (group := dispatch.take()) is not None:
            dispatch.settle(worker.try_render(group[0]))
    finally:
        dispatch.close()
    return tally


# -- one process per device ------------------------------------------------------------------

def _run_processes(plan: Plan, work: WorkArea, jobs: list[Job], devices: tuple[str, ...],
                   advance: Advance, stop: _StopOnInterrupt) -> Tally:
    """A spawned process per device (spawn: CUDA cannot be forked), each building its own
    models; this process hands out jobs one at a time, so a worker that finishes early simply
    takes the next one."""
    ctx = mp.get_context("spawn")
    outbox = ctx.Queue()
    cpu_workers = sum(resolve_device(d).type == "cpu" for d in devices)
    threads = max(1, _cpu_count() // max(1, cpu_workers))  # CPU workers share the cores
    inboxes = [ctx.Queue() for _ in devices]
    procs = [ctx.Process(target=_device_main, name=f"fvds-{d}",
                         args=(plan.config.to_dict(), str(work.out), d, threads, w, inboxes[w],
                               outbox), daemon=True)
             for w, d in enumerate(devices)]
    # An ignored signal stays ignored in a spawned child, so Ctrl-C cannot kill a worker while
    # it imports torch, before it sets up its own handling.
    main = threading.current_thread() is threading.main_thread()
    old = {sig: signal.signal(sig, signal.SIG_IGN) for sig in stop.SIGNALS} if main else {}
    try:
        for p in procs:
            p.start()
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
    tally = Tally()
    dispatch = _Dispatcher(work, [(j,) for j in longest_first(plan, jobs)], advance, tally,
                           stop)
    held: dict[int, Job] = {}  # worker -> job it is rendering
    working = set(range(len(devices)))  # workers not yet told to exit
    idle: deque[int] = deque()  # workers waiting for a job another process holds

    def serve(w: int) -> None:
        """Give worker ``w`` its next job, tell it to exit, or park it until one is free."""
        if w not in working or not procs[w].is_alive():
            return
        group = None if stop.requested else dispatch.take(block=not dispatch.locks)
        if group is WAIT:
            idle.append(w)
        elif group is None:
            inboxes[w].put(None)
            working.discard(w)
        else:
            held[w] = group[0]
            inboxes[w].put(group[0].id)

    try:
        while working:
            try:
                kind, w, job_id, payload = outbox.get(timeout=POLL_S)
            except queue.Empty:
                _bury(procs, devices, held, working, dispatch, work, stop)
                for _ in range(len(idle)):
                    serve(idle.popleft())
                continue
            if kind == "fatal":
                raise FvdsError(payload)
            if kind == "settled":  # the worker wrote the part or the failure record
                dispatch.settled(held.pop(w), payload)
            serve(w)
    finally:
        # workers stop before their jobs' locks go, so no other process takes a job that one
        # of them is still writing
        for w, p in enumerate(procs):
            if p.is_alive() and w in working:
                inboxes[w].put(None)
        for p in procs:
            p.join(timeout=5)
            if p.is_alive():
                p.kill()  # workers ignore SIGTERM (see _device_main)
                p.join(timeout=5)
        dispatch.close()
    return tally


def _bury(procs, devices, held: dict[int, Job], working: set[int], dispatch: _Dispatcher,
          work: WorkArea, stop: _StopOnInterrupt) -> None:
    """Account for workers that died (killed, out of memory, a crash in native code): the job
    one was rendering is a failure unless its part made it to disk."""
    for w in list(working):
        if procs[w].is_alive():
            continue
        working.discard(w)
        job = held.pop(w, None)
        if job is None:
            continue
        error = None
        if not work.is_done(job):
            error = (f"the worker process on {devices[w]} died (exit code "
                     f"{procs[w].exitcode}) while rendering this job")
            work.record_failure(job, error, "", devices[w])
        dispatch.settled(job, error)
    if not working and not dispatch.exhausted:
        if stop.requested:
            raise KeyboardInterrupt
        raise FvdsError("Every worker process died; rerun to resume (see `fvds status`).")


def _device_main(config: dict, out: str, device: str, threads: int, w: int, inbox, outbox,
                 ) -> None:
    """A device's worker process: render the job ids it is given, write their parts."""
    # Ctrl-C (and a scheduler's SIGTERM) reach the whole process group; the parent decides
    # when to stop, so the job in flight here is finished and written.
    for sig in _StopOnInterrupt.SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    _die_with_parent()
    try:
        dev = resolve_device(device)
        if dev.type == "cpu":
            torch.set_num_threads(threads)
        plan = make_plan(Config.from_dict(config))
        work = WorkArea(Path(out))
        worker = Worker(plan, dev)
        jobs = {j.id: j for j in plan.jobs}
    except Exception as e:
        outbox.put(("fatal", w, None, f"The worker process on {device} could not start: "
                                      f"{type(e).__name__}: {e}"))
        return
    outbox.put(("ready", w, None, None))
    parent = mp.parent_process()
    while True:
        try:
            job_id = inbox.get(timeout=1.0)
        except queue.Empty:
            if parent is not None and not parent.is_alive():
                return  # the build was killed: nobody will read what this process writes
            continue
        if job_id is None:
            return
        try:
            error = settle(work, worker.try_render(jobs[job_id]))
        except FvdsError as e:  # the work area cannot be written: nothing more can be saved
            outbox.put(("fatal", w, job_id, str(e)))
            return
        outbox.put(("settled", w, job_id, error))


def _die_with_parent() -> None:
    """Have the kernel kill this worker when the build process dies, even by kill -9 (Linux),
    so that no worker goes on rendering a job whose lock died with the build."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    parent = mp.parent_process()
    if parent is not None and not parent.is_alive():  # died before prctl took effect
        os._exit(1)


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


# -- Ray ---------------------------------------------------------------------------------------

def _import_ray():
    try:
        import ray
    except ImportError:
        raise BadInput('--executor ray needs Ray, which is not installed: '
                       'pip install "fvds[ray]" (or pip install "ray[default]>=2.9").') from None
    return ray


def _run_ray(plan: Plan, work: WorkArea, jobs: list[Job], advance: Advance,
             stop: _StopOnInterrupt, log: Callable[[str], None]) -> Tally:
    """Ray tasks render groups of jobs and return the parts; this driver writes them, so the
    workers need the checkpoints but no shared filesystem for ``--out``."""
    ray = _import_ray()
    started = not ray.is_initialized()
    if started:
        address = os.environ.get("RAY_ADDRESS")
        if address:
            ray.init(address=address)
        else:
            ray.init(address="local", include_dashboard=False)
    try:
        device, gpus, slots = _ray_placement(ray, plan.config.render.device)
        cluster = os.environ.get("RAY_ADDRESS") or ("a local Ray" if started else "Ray")
        log(f"Ray: {cluster}, {slots} {'GPU' if gpus else 'CPU'} slots for {len(jobs)} jobs.")
        # Ray starts a fresh process for every GPU task (it cannot know a task freed its GPU
        # memory), so a GPU task renders a few jobs of one stage to load the model once; CPU
        # workers are reused, and keep their models between tasks.
        size = max(1, min(8, len(jobs) // (4 * slots))) if gpus else 1
        task = ray.remote(_ray_render).options(num_cpus=1, num_gpus=1 if gpus else 0,
                                               max_retries=1)
        tally = Tally()
        dispatch = _Dispatcher(work, _groups(plan, jobs, size), advance, tally, stop)
        config = plan.config.to_dict()
        retry: deque[Job] = deque()  # failed jobs, still locked, to try again alone
        tries: dict[str, int] = {}
        in_flight: dict = {}
        try:
            while True:
                while not stop.requested and len(in_flight) < 2 * slots:
                    # blocking is for an empty pipeline: nothing of ours is locked meanwhile
                    group = (retry.popleft(),) if retry else dispatch.take(
                        block=not in_flight)
                    if group is None or group is WAIT:
                        break
                    in_flight[task.remote(config, [j.id for j in group], device)] = group
                if not in_flight:
                    break
                ready, _ = ray.wait(list(in_flight), num_returns=1, timeout=1.0)
                for ref in ready:
                    group = in_flight.pop(ref)
                    try:
                        outcomes = ray.get(ref)
                    except Exception as e:  # the task itself died (worker crash, node lost)
                        outcomes = [Failed.of(j, e, "ray") for j in group]
                    for outcome in outcomes:
                        job = outcome.job
                        tries[job.id] = tries.get(job.id, 0) + 1
                        if isinstance(outcome, Failed) and tries[job.id] < RAY_ATTEMPTS \
                                and not stop.requested:
                            retry.append(job)
                        else:
                            dispatch.settle(outcome)
        finally:
            for ref in in_flight:
                ray.cancel(ref)
            dispatch.close()
        return tally
    finally:
        if started:
            ray.shutdown()


def _ray_placement(ray, configured: str) -> tuple[str, int, int]:
    """(device inside a task, GPUs per task, task slots) from the cluster's resources."""
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    if configured.startswith("cuda") and not gpus:
        raise BadInput(f"render.device is '{configured}' but the Ray cluster has no GPUs; use "
                       "--device cpu or auto, or add GPU nodes.")
    if gpus and (configured == "auto" or configured.startswith("cuda")):
        return "cuda", 1, gpus  # Ray gives each task one GPU as its cuda:0
    return "cpu", 0, max(1, int(resources.get("CPU", 1)))


def _groups(plan: Plan, jobs: list[Job], size: int) -> list[tuple[Job, ...]]:
    """Groups of up to ``size`` jobs of one stage, costliest groups first."""
    ordered = longest_first(plan, jobs)
    groups = []
    for stage in dict.fromkeys(j.stage for j in ordered):
        mine = [j for j in ordered if j.stage == stage]
        groups += [tuple(mine[i:i + size]) for i in range(0, len(mine), size)]
    flops = plan.layer_flops
    return sorted(groups, key=lambda g: -sum(flops[j.layer.name] * len(j.units) for j in g))


_RAY_WORKER: dict[str, tuple[Worker, dict[str, Job]]] = {}  # per Ray worker process


def _ray_render(config: dict, job_ids: list[str], device: str) -> list[Rendered | Failed]:
    """A Ray task: render some jobs of one build, in a worker that keeps its models between
    tasks of the same build."""
    import json

    key = json.dumps(config, sort_keys=True) + device
    if key not in _RAY_WORKER:
        _RAY_WORKER.clear()  # a new build: drop the last one's models
        plan = make_plan(Config.from_dict(config))
        _RAY_WORKER[key] = (Worker(plan, resolve_device(device)), {j.id: j for j in plan.jobs})
    worker, jobs = _RAY_WORKER[key]
    return [worker.try_render(jobs[i]) for i in job_ids]
