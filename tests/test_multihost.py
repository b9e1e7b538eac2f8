"""pirl.train as a 2-process job (jax.distributed over loopback, 4 fake CPU devices each), stopped
after 1 iteration and resumed to 2, agrees with one process holding all 8 devices running 2
iterations straight: every logged metric (with evaluation) and the final parameters. All runs go
through launch/local.sh, the way a user starts them. The multi-host helpers (host-major stage
merge, gathers) are checked on their own over two processes below."""

import json
import os
import pathlib
import signal
import subprocess
import time

import jax
import numpy as np
import pytest
from multiprocess_helpers import run_processes

from configs import common  # noqa: F401  (the config file below imports it; fail here if it moved)
from pirl import cli, logging, runsetup, runstate
from pirl.rl import update as upd

ROOT = pathlib.Path(__file__).resolve().parents[1]
TIMING = ("time/", "env/steps_per_s")

# Toy simulator (no physics, no downloads), tiny π0. 8 envs → 4 per process, one worker each; a
# 10-step episode in chunks of 5 → 2 chunk steps → 16 samples, micro-batches of 8 (1 per device).
# Eval: 3 tasks × 2 trials in one wave of 8 envs (4 per process).
CONFIG = """
from configs import common


def get_config(arg=None):
    c = common.defaults()
    c.env.update(sim="toy", task="")
    c.policy.update(num_action_chunks=5, action_env_dim=2, num_steps=2)
    c = common.shrink(c)
    c.model.action_dim = 2
    c.env.update(num_envs=8, num_workers=2, max_steps=10, image_size=(16, 16), num_trials=5)
    c.rl.update(minibatch_size=16, micro_batch_size=8, update_epochs=1, lr=1e-3)
    c.train.update(iterations=2, save_every=1, eval_every=1, tensorboard=False)
    c.eval.update(num_envs=8, num_workers=2, num_trials=2, max_steps=0)
    return c
"""


def _launch(config, workdir, processes, devices, *extra, cache=None):
    args = [f"--num_processes={processes}", f"--cpu_devices={devices}", "--", f"--config={config}", *extra]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    # The resumed launch compiles what the first one did: a persistent cache skips that.
    env |= {"JAX_COMPILATION_CACHE_DIR": str(cache), "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
    t0 = time.perf_counter()
    # Own session, so that a timeout takes the launcher's training processes down with it.
    proc = subprocess.Popen(
        ["bash", str(ROOT / "launch" / "local.sh"), *args, f"--workdir={workdir}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=env,
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=900)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        pytest.fail(f"{processes}-process run did not finish in 900 s:\n{stderr[-4000:]}")
    print(f"{processes} process(es) {' '.join(extra)}: {time.perf_counter() - t0:.1f}s")
    assert proc.returncode == 0, stderr[-4000:]
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def _rows(workdir):
    return [{k: v for k, v in r.items() if not k.startswith(TIMING)} for r in logging.read_metrics(workdir)]


def _states(exp, *where):
    """TrainStates of (workdir, iteration) pairs, restored on this process's 8 devices."""
    like = upd.init_train_state(exp.rl, runsetup.build(exp).params)
    out = []
    for workdir, step in where:
        ckpt = runstate.Checkpointer(workdir / "checkpoints")
        state, meta = ckpt.restore(like, step)
        ckpt.close()
        assert meta["iteration"] == step
        out.append(state)
    return out


def _max_diff(x, y) -> float:
    return max(float(np.max(np.abs(np.asarray(u) - np.asarray(v)))) for u, v in zip(x, y, strict=True))


@pytest.mark.slow
def test_two_processes_agree_with_one(tmp_path):
    config = tmp_path / "toy_multihost.py"
    config.write_text(CONFIG)
    one, two, cache = tmp_path / "one", tmp_path / "two", tmp_path / "xla_cache"
    _launch(config, one, 1, 8, cache=cache)
    _launch(config, two, 2, 4, "--config.train.iterations=1", cache=cache)
    out = _launch(config, two, 2, 4, cache=cache)
    assert out.stdout.count("resumed from") == 1 and out.stdout.count("done:") == 1  # process 0 reports
    assert out.stdout.count("PIRL_PROCESS_ID=") == 2

    a, b = _rows(one), _rows(two)
    assert [r["step"] for r in a] == [r["step"] for r in b] == [0, 1, 2]  # eval before training, 2 iterations
    # Metrics are over all processes' envs: 8 episodes and 2 × 8 = 16 samples per iteration, and
    # the eval covers all 3 × 2 (task, trial) pairs.
    for r in b[1:]:
        assert r["env/episodes"] == 8 and r["rollout/samples"] == 16
        assert r["train/actor/grad_norm"] > 0
    assert all("eval/task_success/2" in r for r in b)

    # Same programs on the same 8-device mesh with the same rows on each device, so agreement up
    # to float32 rounding, not bitwise: the cross-device sums (gradients, advantage statistics)
    # run in another order over gloo between processes than inside one process. Relative
    # differences are ~1e-7; metrics that are themselves differences of near-equal numbers (the
    # log-prob recompute error, ~1e-5, is rounding noise) differ by up to ~3e-6 absolute.
    exp, _ = cli.to_experiment(_load(config))
    s1, s2, s2_it1 = _states(exp, (one, 2), (two, 2), (two, 1))
    p1, p2 = jax.tree.leaves(s1.params), jax.tree.leaves(s2.params)
    worst = max(abs(rb[k] - ra[k]) for ra, rb in zip(a, b, strict=True) for k in ra)
    print(json.dumps({"max_abs_metric_diff": worst, "max_abs_param_diff": _max_diff(p1, p2)}))
    for ra, rb in zip(a, b, strict=True):
        assert ra.keys() == rb.keys()
        for k in ra:
            np.testing.assert_allclose(rb[k], ra[k], rtol=1e-4, atol=1e-5, err_msg=k)
    for x, y in zip(p1, p2, strict=True):
        np.testing.assert_allclose(np.asarray(y), np.asarray(x), rtol=1e-4, atol=1e-5)
    # The update really moved the params between the two iterations (not a comparison of inits).
    assert _max_diff(p2, jax.tree.leaves(s2_it1.params)) > 1e-4


def _load(path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("toy_multihost", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


_WORKER = """
import json, sys
import jax, numpy as np
from pirl import rollout, sharding

port, pid = sys.argv[1], int(sys.argv[2])
sharding.initialize_distributed(f"127.0.0.1:{port}", 2, pid)
mesh = sharding.make_mesh(sharding.MeshConfig())
# Host h's envs are 10·h + (0..7); its pool runs env rows [0, 2, 4, 6] in stage 0, the odd ones
# in stage 1. A stage array holds that stage's rows of every host (4 + 4 on the 8 devices).
env = 10 * pid + np.arange(8.0, dtype=np.float32)
rows = [np.arange(0, 8, 2), np.arange(1, 8, 2)]
stages = [sharding.global_batch(mesh, env[r]) for r in rows]
merged = rollout._merge_stages(stages, np.argsort(np.concatenate(rows)))
print(json.dumps({
    "stage0": sharding.to_host(stages[0]).tolist(),
    "merged": sharding.to_host(merged).tolist(),
    "gathered": sharding.gather_hosts(np.arange(pid + 1)).tolist(),
    "any": [sharding.any_host(pid == 1), sharding.any_host(False)],
}))
"""


def test_host_major_helpers_across_two_processes():
    outs = run_processes(_WORKER)
    for out in outs:
        # Stage 0 holds the even env rows of each host, host-major.
        assert out["stage0"] == [0.0, 2.0, 4.0, 6.0, 10.0, 12.0, 14.0, 16.0]
        # Merged back into pool order per host, host-major: every env of host 0, then host 1's.
        assert out["merged"] == [*range(8), *range(10, 18)]
        # Host 0 contributes [0], host 1 [0, 1]: unequal lengths, joined in process order.
        assert out["gathered"] == [0, 0, 1]
        assert out["any"] == [True, False]
