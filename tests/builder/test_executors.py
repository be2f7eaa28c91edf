"""Scale and resilience: shards, one process per device, Ray, kill -9, Ctrl-C, failed jobs,
`fvds assemble` and `fvds status`. Every way of rendering the tiny build must give the dataset
an uninterrupted single-process build gives: the same ids, image bytes and activations."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from conftest import tiny_config, tiny_config_overrides
from fvds.builder.executors import (
    WAIT,
    Launch,
    Shard,
    Tally,
    _Dispatcher,
    _StopOnInterrupt,
    launch_from_flags,
    parse_devices,
    parse_shard,
    shard_from_env,
)
from fvds.builder.pipeline import assemble_work, build
from fvds.builder.plan import make_plan
from fvds.builder.render import JobResult
from fvds.builder.workarea import WorkArea, part_table
from fvds.builder.worker import Worker
from fvds.cli import app
from fvds.errors import BadInput, FvdsError
from fvds.verify import verify_dataset

QUIET = {"quiet": True, "log": lambda m: None}
JOBS = 12  # tiny build: 2 stages x 3 layers x 2 batches


def dataset_rows(folder: Path) -> dict[str, dict]:
    """Every row of a dataset folder by id, read straight from its shards."""
    rows = {}
    for shard in sorted((folder / "data").rglob("*.parquet")):
        for r in pq.read_table(shard).to_pylist():
            rows[r["id"]] = r
    return rows


def assert_same_dataset(a: Path, b: Path) -> None:
    ra, rb = dataset_rows(a), dataset_rows(b)
    assert sorted(ra) == sorted(rb)
    for k in ra:
        assert ra[k]["image"]["bytes"] == rb[k]["image"]["bytes"], k
        assert ra[k]["activation"] == rb[k]["activation"], k
        assert ra[k]["seed"] == rb[k]["seed"], k
        np.testing.assert_array_equal(ra[k]["embedding"], rb[k]["embedding"])
        assert (ra[k]["umap_x"], ra[k]["umap_y"]) == (rb[k]["umap_x"], rb[k]["umap_y"]), k
    assert verify_dataset(a) == []


def cli_args(checkpoint: Path) -> list[str]:
    """`fvds build` flags for the tiny config (conftest.tiny_config), for subprocesses."""
    args = ["--stage", "random=random", "--stage", f"finetuned={checkpoint}"]
    for key, value in tiny_config_overrides().items():
        args += ["--set", f"{key}={json.dumps(value)}"]  # JSON scalars and lists are TOML
    return args


# A build in a fresh interpreter; FVDS_TEST_JOB_DELAY slows each job down so that a test can
# interrupt it in the middle.
_SLOW_CLI = """
import os, sys, time
from fvds.builder.worker import Worker
delay = float(os.environ.get("FVDS_TEST_JOB_DELAY", "0"))
real = Worker.render
def slow(self, job):
    time.sleep(delay)
    return real(self, job)
Worker.render = slow
from fvds.cli import main
sys.argv = ["fvds", *sys.argv[1:]]
main()
"""


def fvds_process(*args: str, delay: float = 0.0) -> subprocess.Popen:
    env = {**os.environ, "FVDS_TEST_JOB_DELAY": str(delay), "COLUMNS": "300", "NO_COLOR": "1"}
    return subprocess.Popen([sys.executable, "-c", _SLOW_CLI, *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def parts_of(out: Path) -> list[Path]:
    return sorted((out / ".fvds" / "parts").rglob("*.parquet"))


def wait_for_parts(proc: subprocess.Popen, out: Path, n: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while len(parts_of(out)) < n:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the build rendered too slowly"
        time.sleep(0.05)


# ---------------------------------------------------------------------------- shards and flags
def test_shards_split_the_plan_round_robin(tiny_checkpoint):
    jobs = make_plan(tiny_config(tiny_checkpoint)).jobs
    shards = [Shard(i, 3).select(jobs) for i in range(3)]
    assert sorted(j.id for s in shards for j in s) == sorted(j.id for j in jobs)
    assert [len(s) for s in shards] == [4, 4, 4]
    assert shards[1][0] == jobs[1] and shards[1][1] == jobs[4]


def test_shard_from_the_scheduler_environment():
    assert shard_from_env({}) is None
    assert shard_from_env({"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_COUNT": "4"}) == \
        Shard(3, 4)
    # an array that starts at 1 (--array=1-4)
    assert shard_from_env({"SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_TASK_COUNT": "4",
                           "SLURM_ARRAY_TASK_MIN": "1"}) == Shard(0, 4)
    assert shard_from_env({"RANK": "1", "WORLD_SIZE": "2"}) == Shard(1, 2)
    # --shard wins over the environment; Ray places jobs itself
    env = {"RANK": "1", "WORLD_SIZE": "2"}
    assert launch_from_flags(shard="0/5", env=env).shard == Shard(0, 5)
    assert launch_from_flags(env=env).shard == Shard(1, 2)
    assert launch_from_flags("ray", env=env).shard is None


@pytest.mark.parametrize(("call", "needle"), [
    (lambda: parse_shard("3/3"), "the shard index must be 0 to 2"),
    (lambda: parse_shard("1-3"), "'1-3' must look like i/N"),
    (lambda: parse_shard("0/0"), "'0/0' must look like i/N"),
    (lambda: shard_from_env({"SLURM_ARRAY_TASK_ID": "x", "SLURM_ARRAY_TASK_COUNT": "2"}),
     "SLURM_ARRAY_TASK_ID"),
    (lambda: parse_devices("cpu,,cpu"), "--devices 'cpu,,cpu'"),
    (lambda: parse_devices("gpu0"), "'gpu0' is not a device"),
    (lambda: launch_from_flags("dask"), "--executor 'dask' is not one of local, ray"),
    (lambda: launch_from_flags("ray", devices="cpu,cpu"), "--devices is for the local"),
])
def test_bad_launch_flags_are_bad_input(call, needle):
    with pytest.raises(BadInput) as e:
        call()
    assert needle in str(e.value)


def test_bad_launch_flags_from_the_cli_change_nothing(tmp_path, tiny_checkpoint):
    out = tmp_path / "out"
    for flags, needle in ((["--shard", "4/4"], "--shard '4/4'"),
                          (["--devices", "tpu"], "'tpu' is not a device"),
                          (["--executor", "spark"], "--executor 'spark'")):
        result = CliRunner().invoke(app, ["build", *cli_args(tiny_checkpoint), "--out",
                                          str(out), *flags])
        assert result.exit_code == 2, result.output
        assert needle in " ".join(result.output.split()) and "Traceback" not in result.output
    assert not out.exists()


# ---------------------------------------------------------------------------- kill -9 and resume
def test_a_build_killed_with_sigkill_resumes_to_the_same_dataset(tmp_path, tiny_checkpoint,
                                                                 tiny_dataset):
    out = tmp_path / "killed"
    proc = fvds_process("build", *cli_args(tiny_checkpoint), "--out", str(out), "-q",
                        delay=0.3)
    wait_for_parts(proc, out, 4)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    survived = len(parts_of(out))
    assert 4 <= survived < JOBS
    assert not (out / "fvds.json").exists()

    report = build(tiny_config(tiny_checkpoint), out, **QUIET)
    assert report.skipped_jobs == survived  # the jobs finished before the kill are reused
    assert report.rendered_jobs == JOBS - survived
    assert_same_dataset(out, tiny_dataset)
    assert not list((out / ".fvds").rglob("*.tmp"))


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_stops_after_the_job_in_flight_and_says_how_to_resume(tmp_path,
                                                                     tiny_checkpoint,
                                                                     tiny_dataset, sig):
    out = tmp_path / "stopped"
    proc = fvds_process("build", *cli_args(tiny_checkpoint), "--out", str(out), "-q",
                        delay=0.5)
    wait_for_parts(proc, out, 2)
    proc.send_signal(sig)  # SIGTERM: what SLURM sends before preempting a job
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Stopping after the jobs in flight" in err
    assert "rerun the same command to resume" in err and "Traceback" not in err
    done = len(parts_of(out))
    assert 2 <= done < JOBS  # the job in flight was finished and written, nothing more

    status = CliRunner().invoke(app, ["status", str(out)])
    assert status.exit_code == 0, status.output
    assert f"{done}/{JOBS}" in status.stdout and "time left:" in status.stdout

    report = build(tiny_config(tiny_checkpoint), out, **QUIET)
    assert (report.skipped_jobs, report.rendered_jobs) == (done, JOBS - done)
    assert_same_dataset(out, tiny_dataset)
    assert "dataset: assembled" in CliRunner().invoke(app, ["status", str(out)]).stdout


# ---------------------------------------------------------------------------- shards and assembly
def test_three_shards_in_separate_processes_then_assemble(tmp_path, tiny_checkpoint,
                                                          tiny_dataset):
    out = tmp_path / "sharded"
    base = ["build", *cli_args(tiny_checkpoint), "--out", str(out), "-q"]
    # shard 0 is started twice by mistake: the job locks keep the two from rendering a job twice
    procs = [fvds_process(*base, "--shard", s, delay=0.3) for s in ("0/3", "0/3", "1/3")]
    results = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], results
    rendered = [int(e.split("Rendered ")[1].split(" jobs")[0]) for _, e in results]
    assert rendered[0] + rendered[1] == 4 and rendered[2] == 4
    assert "run `fvds assemble" in results[0][1]
    assert not (out / "fvds.json").exists()  # a shard never assembles

    # with shard 2 missing, assembly refuses and lists the missing jobs
    refused = CliRunner().invoke(app, ["assemble", str(out)])
    assert refused.exit_code == 1
    missing = [j.id for j in Shard(2, 3).select(make_plan(tiny_config(tiny_checkpoint)).jobs)]
    message = " ".join(refused.output.split())
    assert "4 of 12 jobs are not rendered" in message
    assert all(m in message for m in missing)
    assert not (out / "fvds.json").exists()

    last = fvds_process(*base, "--shard", "2/3")
    assert last.wait(timeout=300) == 0, last.communicate()
    done = CliRunner().invoke(app, ["assemble", str(out), "-q"])
    assert done.exit_code == 0, done.output
    assert_same_dataset(out, tiny_dataset)


def test_assemble_needs_a_build_folder(tmp_path):
    result = CliRunner().invoke(app, ["assemble", str(tmp_path)])
    assert result.exit_code == 2 and "holds no fvds build" in " ".join(result.output.split())
    with pytest.raises(BadInput):
        assemble_work(tmp_path / "nothing", **QUIET)


# ---------------------------------------------------------------------------- executors
def test_two_cpu_worker_processes_give_the_same_dataset(tmp_path, tiny_checkpoint,
                                                        tiny_dataset):
    out = tmp_path / "devices"
    report = build(tiny_config(tiny_checkpoint), out, launch=Launch(devices=("cpu", "cpu")),
                   **QUIET)
    assert report.rendered_jobs == JOBS
    assert_same_dataset(out, tiny_dataset)
    hosts = {pq.read_schema(p).metadata[b"fvds.device"] for p in parts_of(out)}
    assert hosts == {b"cpu"}


def spawned_workers(parent: int) -> list[int]:
    """Worker processes (multiprocessing spawn children) of ``parent``, from /proc."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmd = (entry / "cmdline").read_bytes()
        except (OSError, ValueError, IndexError):
            continue
        if ppid == parent and b"spawn_main" in cmd:
            pids.append(int(entry.name))
    return pids


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_worker_processes_die_with_a_killed_build(tmp_path, tiny_checkpoint):
    out = tmp_path / "orphans"
    # jobs of a minute or more: a worker that outlived the build would still be rendering
    proc = fvds_process("build", *cli_args(tiny_checkpoint), "--set", "render.steps=20000",
                        "--out", str(out), "-q", "--devices", "cpu,cpu")
    deadline = time.monotonic() + 60
    while len(workers := spawned_workers(proc.pid)) < 2:
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.1)
    time.sleep(5)  # they import torch, build their models and start a job
    assert all(alive(w) for w in workers) and not parts_of(out)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    deadline = time.monotonic() + 10
    while any(alive(w) for w in workers):
        assert time.monotonic() < deadline, "worker processes outlived the killed build"
        time.sleep(0.1)


def alive(pid: int) -> bool:
    """Running, not a zombie (a zombie is dead; init reaps it)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_the_ray_executor_on_a_local_ray_gives_the_same_dataset(tmp_path, tiny_checkpoint,
                                                                tiny_dataset, monkeypatch):
    pytest.importorskip("ray", reason="Ray is not installed (pip install -e '.[dev]')")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    out = tmp_path / "ray"
    report = build(tiny_config(tiny_checkpoint), out, launch=Launch(executor="ray"), **QUIET)
    assert report.rendered_jobs == JOBS
    assert_same_dataset(out, tiny_dataset)


def test_ray_missing_is_a_clear_error(tmp_path, tiny_checkpoint, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # makes `import ray` fail
    with pytest.raises(BadInput, match=r"pip install \"fvds\[ray\]\""):
        build(tiny_config(tiny_checkpoint), tmp_path / "x", launch=Launch(executor="ray"),
              **QUIET)
    assert not (tmp_path / "x").exists()  # refused before anything is written


# ---------------------------------------------------------------------------- failed jobs
def test_a_failing_job_is_recorded_shown_by_status_and_retried(tmp_path, tiny_checkpoint,
                                                               tiny_dataset, monkeypatch):
    out = tmp_path / "failing"
    real = Worker.render

    def broken(self, job):
        if job.layer.name == "layer2.0.conv2" and job.stage == "finetuned":
            raise RuntimeError("CUDA out of memory (simulated)")
        return real(self, job)

    monkeypatch.setattr(Worker, "render", broken)
    with pytest.raises(FvdsError, match="2 of 12 jobs failed") as e:
        build(tiny_config(tiny_checkpoint), out, **QUIET)
    assert "finetuned/layer2.0.conv2/" in str(e.value) and "fvds status" in str(e.value)
    assert len(parts_of(out)) == JOBS - 2  # the other jobs are saved

    status = CliRunner().invoke(app, ["status", str(out), "--tracebacks"])
    assert status.exit_code == 0
    assert "finetuned" in status.stdout and "4/6" in status.stdout
    assert "failed jobs: 2" in status.stdout
    assert "RuntimeError: CUDA out of memory (simulated)" in status.stdout
    assert "in broken" in status.stdout  # the traceback

    monkeypatch.setattr(Worker, "render", real)
    report = build(tiny_config(tiny_checkpoint), out, **QUIET)
    assert report.rendered_jobs == 2
    assert not list((out / ".fvds" / "failed").rglob("*.json"))
    assert_same_dataset(out, tiny_dataset)


# ---------------------------------------------------------------------------- locks and numerics
def fake_part(job):
    images = np.zeros((len(job.units), 32, 32, 3), np.uint8)
    result = JobResult(job.layer.name, list(job.units), images,
                       np.zeros(len(job.units), np.float32), 0)
    return part_table(job, "test_resnet", result, 3)


def test_a_launcher_never_waits_for_a_job_while_holding_its_own(tmp_path, tiny_checkpoint):
    """Two launchers on one work area, each holding the job the other still needs: waiting in
    the kernel would deadlock them. They are told to come back instead, and each finds the
    other's job done once it is written."""
    work = WorkArea(tmp_path)
    x, y = make_plan(tiny_config(tiny_checkpoint)).jobs[:2]
    stop = _StopOnInterrupt()
    a = _Dispatcher(work, [(x,), (y,)], lambda j: None, Tally(), stop)
    b = _Dispatcher(work, [(y,), (x,)], lambda j: None, Tally(), stop)
    assert a.take(block=not a.locks) == (x,)
    assert b.take(block=not b.locks) == (y,)
    t0 = time.monotonic()
    assert a.take(block=not a.locks) is WAIT and b.take(block=not b.locks) is WAIT
    assert time.monotonic() - t0 < 0.5
    work.write_part(y, fake_part(y))
    b.settled(y, None)
    assert a.take(block=False) is None and a.tally.elsewhere == 1  # y: done by b
    work.write_part(x, fake_part(x))
    a.settled(x, None)
    assert b.take(block=True) is None and b.tally.elsewhere == 1
    # nothing in flight, waiting for a job another process holds: Ctrl-C ends the wait
    c = _Dispatcher(work, [(x,)], lambda j: None, Tally(), stop)
    holder = work.job_lock(x)
    assert holder.acquire(wait=False)
    work.part_path(x).unlink()
    stop.requested = True
    t0 = time.monotonic()
    assert c.take(block=True) is None and time.monotonic() - t0 < 2
    holder.release()


def test_parts_from_another_kind_of_device_are_refused(tmp_path, tiny_checkpoint,
                                                      tiny_dataset):
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(tiny_dataset, out)
    work = WorkArea(out)
    assert work.recorded_numerics() == "cpu fp32"
    parts_of(out)[0].unlink()
    (out / ".fvds" / "numerics.json").write_text(json.dumps({"numerics": "cuda bf16"}))
    before = sorted(p.name for p in parts_of(out))
    with pytest.raises(BadInput, match="rendered as 'cuda bf16' and this run renders as "
                                       "'cpu fp32'"):
        build(tiny_config(tiny_checkpoint), out, **QUIET)
    assert sorted(p.name for p in parts_of(out)) == before
    with pytest.raises(FvdsError, match="one kind of device and precision"):
        work.record_numerics("cpu fp32")  # what a Ray task's part would meet


def test_a_filesystem_without_locks_or_space_is_a_clear_error(tmp_path, monkeypatch,
                                                              tiny_checkpoint):
    import errno
    import fcntl

    from fvds.builder import workarea

    job = make_plan(tiny_config(tiny_checkpoint)).jobs[0]
    work = WorkArea(tmp_path)

    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with pytest.raises(FvdsError, match="Builds need file locks") as e:
        work.job_lock(job).acquire(wait=False)
    assert "No locks available" in str(e.value)
    monkeypatch.undo()

    def full(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(workarea.os, "replace", full)
    with pytest.raises(FvdsError, match="No space left on device"):
        work.write_part(job, fake_part(job))
    assert not list(tmp_path.rglob("*.tmp")) and not work.part_path(job).exists()
