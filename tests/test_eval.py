"""pirl.eval: the per-task table, suite and MetaWorld difficulty-group averages, results.json."""

import json

import numpy as np
import pytest

from configs import common
from pirl import cli, envsetup
from pirl import eval as eval_lib
from pirl.envs import libero, metaworld


def test_summarize_per_task_and_group_averages():
    names = list(metaworld.INSTRUCTIONS)  # the 50 MT50 tasks, task id = index
    ids = eval_lib.eval_init_ids(50, (), 2)
    assert ids.shape == (100, 2) and ids[:4].tolist() == [[0, 0], [0, 1], [1, 0], [1, 1]]
    # Task "button-press-v3" (easy) succeeds in both trials, every other task in trial 0 only.
    success = ids[:, 1] == 0
    success[ids[:, 0] == names.index("button-press-v3")] = True
    episodes = {"success_once": success, "return": success.astype(float), "length": np.full(100, 10)}
    res = eval_lib.summarize(ids, episodes, names)
    assert res["per_task"]["button-press-v3"]["success"] == 1.0
    assert res["per_task"]["reach-v3"]["success"] == 0.5
    # Suite average over 50 tasks: (1 + 49 · 0.5) / 50 = 0.51.
    assert res["success"] == pytest.approx(0.51)
    # Difficulty groups: easy has 28 tasks → (1 + 27 · 0.5) / 28; the other three groups 0.5.
    easy = (1 + 27 * 0.5) / 28
    assert len(metaworld.DIFFICULTY["easy"]) == 28
    assert res["group_success"]["easy"] == pytest.approx(easy)
    assert res["mt50_average"] == pytest.approx((easy + 3 * 0.5) / 4)
    text = eval_lib.table(res)
    assert "button-press-v3" in text and "MT50 Avg." in text and "average" in text


@pytest.mark.slow
def test_evaluate_writes_table_and_results(tmp_path):
    c = common.defaults()
    c.env.update(task="MT50")
    c.policy.update(num_action_chunks=5, action_env_dim=4, num_steps=2)
    c = common.shrink(c)
    names = list(metaworld.INSTRUCTIONS)
    tasks = (names.index("assembly-v3"), names.index("reach-v3"))
    c.eval.update(num_envs=2, num_workers=2, num_trials=1, tasks=tasks, max_steps=10, videos=True)
    exp, _ = cli.to_experiment(c)
    res = eval_lib.evaluate(exp, str(tmp_path))
    saved = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert saved["episodes"] == 2 and set(saved["per_task"]) == {"assembly-v3", "reach-v3"}
    # Episodes run to the 10-step limit unless they succeed earlier.
    assert all(1 <= n <= 10 for n in saved["episodes_detail"]["length"])
    table = (tmp_path / "eval" / "table.txt").read_text()
    assert "assembly-v3" in table and "reach-v3" in table and "average" in table
    assert len(res["videos"]) == 2 and all((tmp_path / "eval" / "videos").iterdir())


def _protocol_eval(suite: str, **kw) -> tuple:
    """(eval section as run, its sim config) of configs/libero_ppo.py with the openpi protocol."""
    from configs import libero_ppo

    c = libero_ppo.get_config(f"suite={suite}")
    c.eval.update(protocol="openpi_libero", **kw)
    exp, _ = cli.to_experiment(c)
    section = envsetup.resolve_eval(exp.eval, exp.env)
    return exp, section, envsetup.eval_sim_factory(exp.env, section)


def test_openpi_libero_protocol_is_openpis_eval_script():
    """openpi examples/libero/main.py: Args.replan_steps 5, num_steps_wait 10, num_trials_per_task
    50, seed 7, LIBERO_ENV_RESOLUTION 256; eval_libero's max_steps per suite: spatial 220, object
    280, goal 300, libero_10 520, libero_90 400 (policy steps after the wait); env.seed(7) once per
    task, trials 0..49 in order. The RL recipes keep their own limits (libero_10: 480)."""
    openpi_limits = {
        "libero_spatial": 220,
        "libero_object": 280,
        "libero_goal": 300,
        "libero_10": 520,
        "libero_90": 400,
    }
    for short, suite in (
        ("spatial", "libero_spatial"),
        ("object", "libero_object"),
        ("goal", "libero_goal"),
        ("10", "libero_10"),
        ("90", "libero_90"),
    ):
        exp, section, sim = _protocol_eval(short)
        n_tasks = 90 if short == "90" else 10
        assert {sim.task_max_steps(t) for t in range(n_tasks)} == {openpi_limits[suite]}
        assert sim.spec().max_steps == openpi_limits[suite]
        assert (section.replan, sim.warmup_steps, section.num_trials, sim.num_trials) == (5, 10, 50, 50)
        assert (sim.seed, sim.seed_every_reset, sim.image_size) == (7, False, (256, 256))
        # One env and one worker per task, which runs that task's trials 0..49 in order.
        assert (section.num_envs, section.num_workers) == (n_tasks, n_tasks)
        # The RL recipe's own limit and seeding are untouched.
        rl = envsetup.sim_factory(exp.env)
        assert rl.seed_every_reset and rl.limits == "rl"
    assert envsetup.sim_factory(_protocol_eval("10")[0].env).task_max_steps(0) == 480
    # The union: each task its own suite's openpi limit; a task subset gets one env per task.
    _, section, sim = _protocol_eval("130", tasks=(0, 35))
    assert (sim.task_max_steps(0), sim.task_max_steps(35)) == (220, 520) and section.num_envs == 2
    assert libero.NOOP.tolist() == [0.0] * 6 + [-1.0]  # LIBERO_DUMMY_ACTION, the wait steps' action


def test_trial_major_ids_give_each_env_one_task_in_order():
    # 3 tasks x 4 trials in waves of 3 envs: env j runs task j, trials 0, 1, 2, 3.
    ids = eval_lib.eval_init_ids(5, (1, 2, 4), 4, trial_major=True)
    waves = ids.reshape(4, 3, 2)
    assert (waves[..., 0] == [1, 2, 4]).all() and (waves[..., 1] == np.arange(4)[:, None]).all()


def test_openpi_protocol_needs_libero():
    from configs import metaworld_ppo

    c = metaworld_ppo.get_config("")
    c.eval.protocol = "openpi_libero"
    with pytest.raises(cli.ConfigError, match="openpi_libero"):
        cli.to_experiment(c)


def test_launch_check_sees_the_protocols_envs():
    from pirl import launch

    exp, _, _ = _protocol_eval("spatial")  # one env per task: 10, whatever eval.num_envs says
    assert any("eval.num_envs=10 " in line for line in launch.problems(exp, 4, 1, with_eval=True))
