"""What a run survives (toy simulator, tiny π0): an evaluation cut off by an interrupt is done by
the resumed run; metric sinks hold every logged step through a SIGKILL and a cut-short line;
stale temporary checkpoint directories go at start; an unwritable checkpoint directory ends the
run in seconds with one line; SIGTERM exits 143; random SIGKILLs leave the final state bit-identical
with at most one iteration redone per kill."""

import contextlib
import os
import pathlib
import random
import re
import shutil
import signal
import struct
import subprocess
import sys
import textwrap
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from train_helpers import interrupt_after_update

from configs import metaworld_ppo
from pirl import cli, errors, runsetup, runstate, train
from pirl import eval as eval_lib
from pirl import logging as logs
from pirl.rl import update as upd

# Every run here compiles the same programs: a persistent cache shared by the module.
pytestmark = pytest.mark.usefixtures("module_compile_cache")

ROOT = pathlib.Path(__file__).resolve().parents[1]
TIMING = ("time/", "env/steps_per_s")
TOY = [
    "--config=configs/metaworld_ppo.py:shrink",
    "--config.env.sim=toy",
    "--config.env.task=",
    "--config.env.fast_render=False",
    "--config.env.image_size=(16, 16)",
    "--config.policy.action_env_dim=2",
]


def _toy(iterations: int, **train_kw):
    c = metaworld_ppo.get_config("shrink")
    c.env.update(sim="toy", task="", image_size=(16, 16), fast_render=False)
    c.policy.action_env_dim = 2
    c.train.update(iterations=iterations, tensorboard=False, **train_kw)
    exp, _ = cli.to_experiment(c)
    return exp


def _rows(workdir):
    return [{k: v for k, v in r.items() if not k.startswith(TIMING)} for r in logs.read_metrics(workdir)]


def _final(workdir, exp):
    ckpt = runstate.Checkpointer(pathlib.Path(workdir) / "checkpoints")
    setup = runsetup.build(exp)
    state, meta = ckpt.restore(upd.init_train_state(exp.rl, setup.params))
    ckpt.close()
    return meta, state


# ---------------------------------------------------------------- an interrupted evaluation

EVAL_RUN = dict(save_every=100, eval_every=3)  # evaluations after iterations 0, 3 and 4 (the last)


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("straight")
    train.train(_toy(4, **EVAL_RUN), workdir)
    return workdir


def _interrupt_eval(monkeypatch, call: int):
    """SIGINT as the ``call``-th evaluation starts."""
    real, calls = eval_lib.Evaluator.run, []

    def run(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == call:
            os.kill(os.getpid(), signal.SIGINT)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(eval_lib.Evaluator, "run", run)


@pytest.mark.slow
@pytest.mark.parametrize("where", ["update", "eval"])
def test_an_interrupted_evaluation_is_done_by_the_resumed_run(tmp_path, monkeypatch, straight, where):
    exp = _toy(4, **EVAL_RUN)
    with monkeypatch.context() as m:
        if where == "update":
            interrupt_after_update(m, call=3)  # Ctrl-C during iteration 3's update
        else:
            _interrupt_eval(m, call=2)  # during iteration 3's evaluation (the first is iteration 0's)
        with pytest.raises(KeyboardInterrupt):
            train.train(exp, tmp_path)
    rows = _rows(tmp_path)
    assert [r["step"] for r in rows] == [0, 1, 2, 3] and "eval/success" not in rows[3]
    meta, _ = _final(tmp_path, exp)
    assert meta["iteration"] == 3 and meta["pending"] == ["eval"]
    train.train(exp, tmp_path)
    assert _rows(tmp_path) == _rows(straight)  # iteration 3's evaluation included
    assert "eval/success" in _rows(tmp_path)[3]
    # A later run of the same command owes nothing: the last checkpoint (4) holds no pending work.
    assert _final(tmp_path, exp)[0] == {"iteration": 4, "seed": 0, "pending": []}


# ---------------------------------------------------------------- metric sinks


def test_a_line_cut_short_is_skipped_by_readers_and_dropped_by_the_writer(tmp_path, caplog):
    w = logs.MetricWriter(tmp_path, tensorboard=False)
    w.write(1, {"a": 1.0})
    w.write(2, {"a": 2.0})
    w.close()
    jsonl = tmp_path / "metrics.jsonl"
    with open(jsonl, "ab") as f:
        f.write(b'{"step": 3, "a": 3.')  # what a full disk (or a kill) left of step 3's record
    assert logs.read_metrics(tmp_path) == [{"step": 1, "a": 1.0}, {"step": 2, "a": 2.0}]
    assert "skipped 1 line(s)" in caplog.text and str(jsonl) in caplog.text
    logs.plot_learning_curve(tmp_path, ("a",))  # the plot that used to fail on it
    w = logs.MetricWriter(tmp_path, tensorboard=False)
    w.write(3, {"a": 3.5})
    w.close()
    assert jsonl.read_text() == '{"step": 1, "a": 1.0}\n{"step": 2, "a": 2.0}\n{"step": 3, "a": 3.5}\n'


def test_a_resumed_writer_drops_later_steps_and_records_of_a_step_merge(tmp_path):
    w = logs.MetricWriter(tmp_path, tensorboard=False)
    for step in (1, 2, 3):
        w.write(step, {"a": float(step)})
    w.close()
    # Resumed from the checkpoint of iteration 1: steps 2 and 3 are about to be logged again.
    w = logs.MetricWriter(tmp_path, tensorboard=False, purge_step=2)
    w.write(1, {"eval/success": 0.5})  # an evaluation of step 1 finished after the interrupt
    w.write(2, {"a": 20.0})
    w.close()
    assert logs.read_metrics(tmp_path) == [{"step": 1, "a": 1.0, "eval/success": 0.5}, {"step": 2, "a": 20.0}]


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_a_full_disk_is_one_error_naming_the_file(tmp_path):
    (tmp_path / "metrics.jsonl").symlink_to("/dev/full")  # every write: ENOSPC
    w = logs.MetricWriter(tmp_path, tensorboard=False)
    with pytest.raises(errors.WriteError) as e:
        w.write(1, {"a": 1.0})
    assert e.value.summary == f"cannot write {tmp_path / 'metrics.jsonl'} (No space left on device)"
    w.close()


def _tensorboard_scalars(logdir: pathlib.Path) -> tuple[dict[tuple[int, str], float], list[int]]:
    """{(step, tag): value} of every scalar in the event files, and the steps of SessionLog START
    events. Event files are TFRecords: uint64 length, uint32 crc, the Event proto, uint32 crc."""
    from tensorboardX.proto import event_pb2

    scalars, starts = {}, []
    for path in sorted(logdir.glob("events.out.tfevents.*")):
        data = path.read_bytes()
        pos = 0
        while pos + 12 <= len(data):
            (n,) = struct.unpack("<Q", data[pos : pos + 8])
            event = event_pb2.Event.FromString(data[pos + 12 : pos + 12 + n])
            pos += 12 + n + 4
            for v in event.summary.value:
                scalars[(event.step, v.tag)] = v.simple_value
            if event.HasField("session_log") and event.session_log.status == event_pb2.SessionLog.START:
                starts.append(event.step)
    return scalars, starts


def test_tensorboard_holds_every_logged_scalar_through_a_sigkill(tmp_path):
    script = textwrap.dedent(
        f"""
        import os, signal
        from pirl import logging as logs
        w = logs.MetricWriter({str(tmp_path)!r}, tensorboard=True, purge_step=1)
        for step in (1, 2):
            w.write(step, {{f"m/{{i}}": step * 100.0 + i for i in range(40)}})
        os.kill(os.getpid(), signal.SIGKILL)  # no close, no flush beyond what write did
        """
    )
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert out.returncode == -signal.SIGKILL
    scalars, starts = _tensorboard_scalars(tmp_path / "tensorboard")
    assert scalars == {(s, f"m/{i}"): s * 100.0 + i for s in (1, 2) for i in range(40)}
    assert starts == [1]  # the purge marker that hides a stopped run's later steps
    assert [r["step"] for r in logs.read_metrics(tmp_path)] == [1, 2]


# ---------------------------------------------------------------- checkpoints


def test_stale_temporary_checkpoints_are_removed_at_start(tmp_path):
    ckpt = runstate.Checkpointer(tmp_path)
    ckpt.save(1, {"w": jnp.arange(8.0)}, {"iteration": 1})
    ckpt.close()
    # What a save killed before its final rename leaves: the step written under orbax's
    # temporary name (here a copy of a complete step, as large as one).
    shutil.copytree(tmp_path / "1", tmp_path / "2.orbax-checkpoint-tmp")
    ckpt = runstate.Checkpointer(tmp_path)
    deadline = time.monotonic() + 60
    while (tmp_path / "2.orbax-checkpoint-tmp").exists() and time.monotonic() < deadline:
        time.sleep(0.1)  # orbax removes them in the background, before any save
    assert sorted(p.name for p in tmp_path.iterdir()) == ["1"] and ckpt.latest() == 1
    ckpt.close()


def test_a_corrupt_run_checkpoint_names_itself_and_the_way_out(tmp_path):
    ckpt = runstate.Checkpointer(tmp_path)
    ckpt.save(1, {"w": jnp.arange(8.0)}, {"iteration": 1})
    ckpt.close()
    (tmp_path / "1" / "state" / "_METADATA").unlink()
    ckpt = runstate.Checkpointer(tmp_path)
    with pytest.raises(ValueError) as e:
        ckpt.restore({"w": jnp.zeros(8)})
    assert str(e.value).startswith(f"run checkpoint {tmp_path / '1' / 'state'} is incomplete: it has no _METADATA")
    assert str(e.value).endswith(f"delete {tmp_path / '1'} to resume from the checkpoint before it")
    ckpt.close()


def test_a_run_checkpoint_of_another_config_is_not_called_corrupt(tmp_path):
    ckpt = runstate.Checkpointer(tmp_path)
    ckpt.save(1, {"w": jnp.arange(8.0), "b": jnp.zeros(2)}, {"iteration": 1})
    ckpt.close()
    ckpt = runstate.Checkpointer(tmp_path)
    with pytest.raises(ValueError) as e:
        ckpt.restore({"w": jnp.zeros(9), "b": jnp.zeros(2)})
    assert str(e.value) == (
        f"run checkpoint {tmp_path / '1'} was written by another config: w is stored as (8,), the config needs "
        "(9,); run this config in another --workdir, or the config that wrote it here"
    )
    state, meta = ckpt.restore({"w": jnp.zeros(8), "b": jnp.ones(2)})  # the config that wrote it
    assert meta == {"iteration": 1} and state["w"].tolist() == list(range(8))
    ckpt.close()


def test_sigterm_takes_the_interrupt_path_and_means_exit_143():
    previous = signal.getsignal(signal.SIGTERM)
    try:
        train._install_sigterm()
        with pytest.raises(train.Interrupted) as e:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
        assert e.value.signum == signal.SIGTERM and train.exit_code(e.value) == 143
        assert train.exit_code(KeyboardInterrupt()) == 130  # Ctrl-C
    finally:
        signal.signal(signal.SIGTERM, previous)


# ---------------------------------------------------------------- as a user runs it


def _env(cache: pathlib.Path) -> dict:
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT), JAX_COMPILATION_CACHE_DIR=str(cache))
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    env.pop("XLA_FLAGS", None)  # one CPU device, as a user's laptop
    return env


def _logged(workdir: pathlib.Path) -> int:
    rows = logs.read_metrics(workdir)
    return max((r["step"] for r in rows), default=-1)


def _wait_for_step(proc, workdir: pathlib.Path, step: int, timeout: float = 600) -> bool:
    """Waits until metrics.jsonl logs ``step`` (True) or the process ends (False)."""
    deadline = time.monotonic() + timeout
    while _logged(workdir) < step:
        if proc.poll() is not None:
            return False
        assert time.monotonic() < deadline, f"step {step} not logged in {timeout} s"
        time.sleep(0.05)
    return True


def _make_unwritable(path: pathlib.Path):
    """Makes ``path`` refuse new entries, the way that works here: ``chattr +i`` (what a user
    would do), else chmod for a non-root user, else a read-only bind mount. Returns (how, undo)."""

    def refuses() -> bool:
        try:
            (path / ".probe").mkdir()
        except OSError:
            return True
        (path / ".probe").rmdir()
        return False

    attempts = [
        ("chattr +i", ["chattr", "+i", str(path)], ["chattr", "-i", str(path)]),
        (
            "read-only bind mount",
            ["sh", "-c", f"mount --bind {path} {path} && mount -o remount,bind,ro {path}"],
            ["umount", str(path)],
        ),
    ]
    if os.geteuid() != 0:
        path.chmod(0o555)
        if refuses():
            return "chmod 555", lambda: path.chmod(0o755)
        path.chmod(0o755)
    for how, do, undo in attempts:
        if subprocess.run(do, capture_output=True).returncode == 0:
            if refuses():
                return how, lambda undo=undo: subprocess.run(undo, capture_output=True)
            subprocess.run(undo, capture_output=True)
    pytest.skip("cannot make a directory unwritable here (no chattr, root, no mount)")


@pytest.mark.slow
def test_an_unwritable_checkpoint_directory_ends_the_run_within_seconds(tmp_path):
    workdir = tmp_path / "run"
    cmd = [sys.executable, "-m", "pirl.train", *TOY, "--config.train.iterations=100000", f"--workdir={workdir}"]
    # stderr to a file, not a pipe its worker processes could hold open; its own session, so that
    # whatever it leaves running can be found; a hang dumps every thread's stack (faulthandler).
    log = tmp_path / "stderr.txt"
    env = _env(tmp_path / "cache") | {"PYTHONFAULTHANDLER": "1"}
    with open(log, "w") as err_file:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stderr=err_file, text=True, start_new_session=True)
    undo = None
    try:
        assert _wait_for_step(proc, workdir, 3), log.read_text()[-3000:]
        how, undo = _make_unwritable(workdir / "checkpoints")
        t0 = time.monotonic()
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGABRT)
            proc.wait(timeout=30)
            pytest.fail(f"the run went on for 120 s after its checkpoints turned read-only: {log.read_text()[-6000:]}")
        took = time.monotonic() - t0
        left = _session_processes(proc.pid, wait_s=15)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        if undo:
            undo()
    err = log.read_text()
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert proc.returncode == 1 and len(lines) == 1, err[-3000:]
    assert re.fullmatch(
        rf"error: cannot write checkpoint {workdir}/checkpoints/\d+ \(.*\); the last good checkpoint is "
        rf"{workdir}/checkpoints/\d+",
        lines[0],
    ), lines[0]
    # The next save comes at most one iteration after the directory turned read-only.
    assert took < 60, took
    assert not left, f"still running after the run ended: {left}"
    print(f"made read-only with {how}; exited {took:.1f} s later: {lines[0]}")


def _session_processes(sid: int, wait_s: float) -> list[str]:
    """Command lines of the processes still in session ``sid`` after up to ``wait_s`` seconds."""
    deadline = time.monotonic() + wait_s
    while True:
        left = []
        for stat in pathlib.Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError):
                fields = stat.read_text().rsplit(")", 1)[1].split()
                if int(fields[3]) == sid and fields[0] != "Z":  # session id; zombies have ended
                    left.append((stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode()[:200])
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.2)


def test_a_hung_close_after_a_failed_write_still_ends_the_process_in_one_line():
    code = (
        "import time\n"
        "from pirl import cli, errors\n"
        "cli.exit_if_stuck(errors.WriteError('cannot write checkpoint /x/3 (Read-only file system)'), 0.5)\n"
        "time.sleep(60)\n"
    )
    t0 = time.monotonic()
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and time.monotonic() - t0 < 30, out.stderr[-2000:]
    assert out.stderr.strip().splitlines() == [
        "error: cannot write checkpoint /x/3 (Read-only file system) (closing the run took over 0.5 s: stopped)"
    ]
    # Closed in time: the timer is cancelled and the process carries on.
    code = "import time\nfrom pirl import cli\ncli.exit_if_stuck(OSError('x'), 0.5).cancel()\ntime.sleep(1.0)\n"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stderr == "", out.stderr[-2000:]


@pytest.mark.slow
def test_kill_storm_resumes_bit_identical_with_at_most_one_iteration_redone_per_kill(tmp_path):
    iterations = 12
    storm, straight = tmp_path / "storm", tmp_path / "straight"
    env = _env(tmp_path / "cache")

    def command(workdir):
        return [
            sys.executable,
            "-m",
            "pirl.train",
            *TOY,
            f"--config.train.iterations={iterations}",
            "--config.train.save_every=1",
            "--config.train.tensorboard=True",
            f"--workdir={workdir}",
        ]

    def start(workdir):
        return subprocess.Popen(
            command(workdir), cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )

    def complete(workdir) -> int:
        """The newest complete checkpoint: where the next run resumes (0 without one)."""
        steps = [int(p.name) for p in (workdir / "checkpoints").glob("*") if p.name.isdigit()]
        return max(steps, default=0)

    rng = random.Random(0)
    # One kill while the process starts (imports, compiles, restore), then kills at random moments
    # after it has logged a new iteration (rollouts, updates, saves), then a SIGTERM. Redone by the
    # next run: the last iteration logged minus the checkpoint it resumes from.
    plan = [("start", signal.SIGKILL), ("run", signal.SIGKILL), ("run", signal.SIGKILL), ("run", signal.SIGTERM)]
    redone = []
    for when, sig in plan:
        proc = start(storm)
        before = _logged(storm)
        if when == "start":
            time.sleep(rng.uniform(1.0, 4.0))
        elif _wait_for_step(proc, storm, before + 1):
            time.sleep(rng.uniform(0.0, 1.5))
        proc.send_signal(sig)
        out, _ = proc.communicate(timeout=300)
        redone.append(max(_logged(storm), 0) - complete(storm))
        if sig == signal.SIGTERM and proc.returncode != 0:
            assert proc.returncode == 143, out[-3000:]
            assert "interrupted: saving iteration" in out
    resume_at = complete(storm)
    final = subprocess.run(command(storm), cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert final.returncode == 0, final.stderr[-3000:]
    assert f"at iteration {resume_at}" in final.stdout
    print(f"iterations redone after each kill: {redone}")
    assert all(n <= 1 for n in redone), redone
    assert redone[-1] == 0  # after SIGTERM the run resumes exactly where it stopped
    subprocess.run(command(straight), cwd=ROOT, env=env, capture_output=True, timeout=900, check=True)

    exp = _toy(iterations)
    (meta_a, a), (meta_b, b) = _final(storm, exp), _final(straight, exp)
    assert meta_a == meta_b == {"iteration": iterations, "seed": 0, "pending": []}
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert _rows(storm) == _rows(straight) and len(_rows(storm)) == iterations
    # What the killed saves left was removed by the next start.
    assert not list((storm / "checkpoints").glob("*.orbax-checkpoint-tmp*"))
    # TensorBoard: every iteration's scalars, each step's values those of metrics.jsonl.
    scalars, _ = _tensorboard_scalars(storm / "tensorboard")
    for row in logs.read_metrics(storm):
        for k, v in row.items():
            if k != "step":
                assert scalars[(row["step"], k)] == pytest.approx(v, rel=1e-6), (row["step"], k)
