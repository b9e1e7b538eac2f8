"""pirl.eval: the per-task table, suite and MetaWorld difficulty-group averages, results.json."""

import json

import numpy as np
import pytest

from configs import common
from pirl import cli
from pirl import eval as eval_lib
from pirl.envs import metaworld


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
    c.eval.update(num_envs=2, num_workers=2, num_trials=1, tasks=(0, 43), max_steps=10, videos=True)
    exp, _ = cli.to_experiment(c)
    res = eval_lib.evaluate(exp, str(tmp_path))
    saved = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert saved["episodes"] == 2 and set(saved["per_task"]) == {"assembly-v3", "reach-v3"}
    # Episodes run to the 10-step limit unless they succeed earlier.
    assert all(1 <= n <= 10 for n in saved["episodes_detail"]["length"])
    table = (tmp_path / "eval" / "table.txt").read_text()
    assert "assembly-v3" in table and "reach-v3" in table and "average" in table
    assert len(res["videos"]) == 2 and all((tmp_path / "eval" / "videos").iterdir())
