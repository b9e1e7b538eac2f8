"""pirl.train end to end on a real simulator (MetaWorld reach, tiny π0): a run stopped after 2
iterations and resumed to 4 equals an uninterrupted 4-iteration run, metric for metric and bit for
bit in the final params; logs, checkpoints and the learning curve are written."""

import json
import math
import os
import signal
import time

import jax
import numpy as np
import pytest
from train_helpers import interrupt_after_update

from configs import common
from pirl import cli, logging, runsetup, runstate, train
from pirl.rl import update as upd

# Every run here compiles the same programs: a persistent cache shared by the module.
pytestmark = pytest.mark.usefixtures("module_compile_cache")

TIMING = ("time/", "env/steps_per_s")


def _experiment(iterations: int, **train_overrides):
    c = common.defaults()
    c.env.task = "reach-v3"
    c.policy.update(num_action_chunks=5, action_env_dim=4, num_steps=2)
    c = common.shrink(c)
    c.env.update(num_envs=4, num_workers=2, max_steps=20, image_size=(32, 32))
    samples = 4 * math.ceil(20 / 5)  # a multiple of the 8 test devices
    c.rl.update(minibatch_size=samples, micro_batch_size=samples, update_epochs=2, lr=1e-3)
    c.train.update(iterations=iterations, save_every=1, tensorboard=False, **train_overrides)
    exp, _ = cli.to_experiment(c)
    return exp


def _rows(workdir):
    return [{k: v for k, v in r.items() if not k.startswith(TIMING)} for r in logging.read_metrics(workdir)]


def _final_params(workdir, exp):
    ckpt = runstate.Checkpointer(workdir / "checkpoints")
    setup = runsetup.build(exp)
    state, meta = ckpt.restore(upd.init_train_state(exp.rl, setup.params))
    ckpt.close()
    return meta, state.params


def test_interrupts_deferred_holds_the_signal_to_the_end_of_the_block():
    ran = []
    with pytest.raises(KeyboardInterrupt, match="signal 2"), train.interrupts_deferred():
        os.kill(os.getpid(), signal.SIGINT)
        ran.append("after the signal")
    assert ran == ["after the signal"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored


@pytest.mark.slow
def test_stopped_and_resumed_run_equals_uninterrupted_run(tmp_path, monkeypatch):
    resumed, straight = tmp_path / "resumed", tmp_path / "straight"
    t0 = time.perf_counter()
    train.train(_experiment(2), resumed)
    print(f"first run {time.perf_counter() - t0:.1f}s")
    assert [r["step"] for r in _rows(resumed)] == [1, 2]
    # Resumed towards 4, then Ctrl-C lands right after iteration 3's update has donated the old
    # state: the final checkpoint holds the updated state as iteration 3, with its metrics logged.
    with monkeypatch.context() as m:
        interrupt_after_update(m, call=1)
        with pytest.raises(KeyboardInterrupt):
            train.train(_experiment(4), resumed)
    assert [r["step"] for r in _rows(resumed)] == [1, 2, 3]
    assert _final_params(resumed, _experiment(4))[0]["iteration"] == 3
    train.train(_experiment(4), resumed)
    t0 = time.perf_counter()
    train.train(_experiment(4), straight)
    print(f"4-iteration run {time.perf_counter() - t0:.1f}s")

    a, b = _rows(resumed), _rows(straight)
    assert [r["step"] for r in a] == [1, 2, 3, 4]
    assert a == b  # every logged number, iterations 1-4, exactly
    # The update really ran and the env really stepped (not a run of zeros).
    assert all(r["env/steps"] > 0 and r["train/actor/grad_norm"] > 0 for r in a)
    assert len({r["rollout/logp_mean"] for r in a}) == 4

    (meta_a, pa), (meta_b, pb) = _final_params(resumed, _experiment(4)), _final_params(straight, _experiment(4))
    assert meta_a["iteration"] == meta_b["iteration"] == 4
    for x, y in zip(jax.tree.leaves(pa), jax.tree.leaves(pb), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert (straight / "learning_curve.png").stat().st_size > 1000
    # keep_checkpoints (3) bounds what stays on disk.
    assert sorted(int(p.name) for p in (straight / "checkpoints").iterdir() if p.name.isdigit()) == [2, 3, 4]
    json.dumps(a)  # metrics are plain JSON numbers
