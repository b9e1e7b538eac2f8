"""launch/colab notebooks: stored clean, and executed top to bottom at test sizes.

Each notebook's first code cell (tagged "parameters", papermill's convention) holds the Colab
defaults; the tests insert a cell after it that shrinks the run (tiny model, a checkpoint written
here, 1 task × 1 trial, short episodes) and execute the notebook in a fresh kernel, outside Colab,
so its install step only moves to the repository root.
"""

import ast
import json
import os
import pathlib

import numpy as np
import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

ROOT = pathlib.Path(__file__).resolve().parents[1]
NB_DIR = ROOT / "launch" / "colab"
NOTEBOOKS = ("quickstart.ipynb", "eval_checkpoint.ipynb", "denoising_chain.ipynb")


def _parameters_cell(nb) -> int:
    tagged = [i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, f"expected one cell tagged 'parameters', found {len(tagged)}"
    return tagged[0]


def _parameter_names(nb) -> set[str]:
    tree = ast.parse(nb.cells[_parameters_cell(nb)].source)
    return {t.id for node in tree.body if isinstance(node, ast.Assign) for t in node.targets}


def execute(name: str, params: dict, out_dir: pathlib.Path):
    """Runs launch/colab/<name> with ``params`` injected after its parameters cell; returns the
    executed notebook (also written to out_dir for inspection)."""
    nb = nbformat.read(NB_DIR / name, as_version=4)
    unknown = set(params) - _parameter_names(nb)
    assert not unknown, f"{name} has no parameters {sorted(unknown)}"
    source = "\n".join(f"{k} = {v!r}" for k, v in params.items())
    cell = nbformat.v4.new_code_cell(source, metadata={"tags": ["injected-parameters"]})
    nb.cells.insert(_parameters_cell(nb) + 1, cell)
    # One CPU device as on a user's machine; unoptimized XLA because compile time dominates here.
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_backend_optimization_level=0", PYTHONPATH=str(ROOT))
    client = nbclient.NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(NB_DIR)}}
    )
    try:
        client.execute(env=env)
    finally:
        nbformat.write(nb, out_dir / name)
    return nb


def _outputs(nb, kind: str) -> list:
    """Every output of the executed notebook with the given MIME type (or 'stream' text)."""
    found = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if kind == "stream" and out.output_type == "stream":
                found.append(out.text)
            elif kind in out.get("data", {}):
                found.append(out.data[kind])
    return found


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_stored_notebooks_are_clean(name):
    nb = nbformat.read(NB_DIR / name, as_version=4)
    nbformat.validate(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{name}: stored with outputs"
    params = nb.cells[_parameters_cell(nb)]
    assert params.cell_type == "code"
    assert all(c.cell_type == "markdown" for c in nb.cells[: _parameters_cell(nb)]), "parameters come first"
    assert {"REPO_URL", "WORKDIR"} <= _parameter_names(nb)


@pytest.mark.slow
def test_quickstart_notebook(tmp_path):
    workdir = tmp_path / "run"
    overrides = [
        # 2 demos, 4 SFT steps, one PPO iteration of 2 envs × 12 chunk steps, evals of 2 × 10 steps.
        "--config.sft.num_demos=2",
        "--config.sft.holdout_demos=0",
        "--config.sft.steps=4",
        "--config.sft.log_every=2",
        "--config.model.image_size=28",
        "--config.env.num_envs=2",
        "--config.env.max_steps=60",
        "--config.rl.minibatch_size=24",
        "--config.rl.micro_batch_size=24",
        "--config.rl.update_epochs=1",
        "--config.train.iterations=1",
        "--config.train.eval_every=1",
        "--config.train.progress=False",
        "--config.train.tensorboard=False",
        "--config.eval.num_envs=2",
        "--config.eval.num_trials=1",
        "--config.eval.max_steps=10",
    ]
    nb = execute("quickstart.ipynb", {"WORKDIR": str(workdir), "GPU": False, "OVERRIDES": overrides}, tmp_path)
    from pirl import logging

    rows = logging.read_metrics(workdir)
    # Eval before training (iteration 0) and after the one PPO iteration.
    assert [r["step"] for r in rows if "eval/success" in r] == [0, 1]
    assert any("env/success_once" in r and r["step"] == 1 for r in rows)
    assert (workdir / "sft" / "params").is_dir()  # the SFT stage ran and the RL started from it
    text = "".join(_outputs(nb, "stream"))
    assert "eval success by iteration: [(0, " in text and "--config=configs/quickstart.py " in text
    assert (workdir / "learning_curve.png").stat().st_size > 1000
    assert len(_outputs(nb, "image/png")) == 1
    # Both evaluations (iterations 0 and 1) recorded 2 envs; all four videos are shown inline.
    videos = sorted(workdir.glob("videos/eval_it*/*.mp4"))
    assert len(videos) == 4
    shown = [h for h in _outputs(nb, "text/html") if "<video" in h]
    assert len(shown) == 4 and all("base64" in h for h in shown)


@pytest.fixture(scope="module")
def tiny_libero_checkpoint(tmp_path_factory):
    """A tiny π0.5 in openpi's layout with LIBERO-shaped norm stats (state 8, actions 7)."""
    import jax

    from pirl import checkpoints
    from pirl.data import norm_stats as ns
    from pirl.models import pi0

    config = pi0.Pi0Config.tiny(pi05=True)
    rng = np.random.default_rng(0)
    # Small random weights from the shapes alone (no compile): activations stay finite.
    params = jax.tree.map(lambda s: (0.05 * rng.normal(size=s.shape)).astype(s.dtype), pi0.param_shapes(config))
    stats = {"state": ns.compute(rng.normal(size=(64, 8))), "actions": ns.compute(rng.uniform(-1, 1, (64, 7)))}
    path = tmp_path_factory.mktemp("ckpt") / "pi05_tiny_libero"
    checkpoints.save_openpi(path, params, norm_stats=stats, asset_id="physical-intelligence/libero")
    return str(path)


@pytest.mark.slow
@pytest.mark.libero_assets
def test_eval_checkpoint_notebook(tmp_path, tiny_libero_checkpoint):
    pytest.importorskip("libero")
    workdir = tmp_path / "eval_run"
    params = {
        "CHECKPOINT": tiny_libero_checkpoint,
        "CONFIG_ARG": "suite=spatial,pi05,shrink",  # shrink: embedded tokenizer, 64² renders
        "PROTOCOL": "",
        "TASKS": (0,),
        "NUM_TRIALS": 1,
        "MAX_STEPS": 10,
        "NUM_ENVS": 1,
        "WORKDIR": str(workdir),
    }
    nb = execute("eval_checkpoint.ipynb", params, tmp_path)
    res = json.loads((workdir / "eval" / "results.json").read_text())
    assert list(res["per_task"]) == ["libero_spatial/0"] and res["per_task"]["libero_spatial/0"]["trials"] == 1
    # One episode of at most 10 steps (5-action chunks: 2 chunks unless it succeeds first).
    assert res["episodes"] == 1 and 1 <= res["episodes_detail"]["length"][0] <= 10
    text = "".join(_outputs(nb, "stream"))
    assert "libero_spatial/0" in text and "average" in text and "max_steps=10" in text
    shown = [h for h in _outputs(nb, "text/html") if "<video" in h]
    assert len(shown) == 1 == len(res["videos"])


@pytest.mark.slow
@pytest.mark.libero_assets
def test_denoising_chain_notebook(tmp_path, tiny_libero_checkpoint):
    pytest.importorskip("libero")
    workdir = tmp_path / "chain"
    params = {
        "CHECKPOINT": tiny_libero_checkpoint,
        "CONFIG_ARG": "suite=spatial,pi05,shrink",
        "NUM_STEPS": 3,
        "NOISE_LEVEL": 0.5,
        "DIMS": (0, 6),
        "WORKDIR": str(workdir),
    }
    nb = execute("denoising_chain.ipynb", params, tmp_path)
    s = json.loads((workdir / "denoising.json").read_text())
    # std_k = √Δ·a·√(t_k / (1 − t_k)), Δ = 1/3, a = 0.5, t = 1, 2/3, 1/3 (t = 1 divides by 1 − t_1 = 1/3):
    #   k = 0: √(1/3)·0.5·√3 = 0.5;  k = 1: √(1/3)·0.5·√2 = 0.5·√(2/3);  k = 2: √(1/3)·0.5/√2 = 0.5·√(1/6).
    np.testing.assert_allclose(s["step_std"], [0.5, 0.5 * np.sqrt(2 / 3), 0.5 * np.sqrt(1 / 6)], rtol=1e-6)
    np.testing.assert_allclose(s["t"], [1, 2 / 3, 1 / 3, 0], atol=1e-7)
    # The joint log-prob is the mean of the K + 1 = 4 terms (prior of x_0 and 3 steps) that the
    # notebook recomputed step by step from the stored chain, and re-scoring agrees with sampling.
    assert len(s["logp_terms"]) == 4
    assert s["logp_sum"] == pytest.approx(sum(s["logp_terms"]))
    assert s["logp_sum"] == pytest.approx(4 * s["flow_sample_logp"], rel=1e-5, abs=1e-4)
    assert s["flow_score_logp"] == pytest.approx(s["flow_sample_logp"], rel=1e-5, abs=1e-4)
    # The ODE chain from the same x_0 ends where pi0.sample_actions (plain Euler) and
    # flow.sample(train=False) end.
    assert s["ode_vs_euler"] < 1e-5 and s["ode_vs_eval"] < 1e-5
    train, evaluated = np.array(s["env_actions"]["train"]), np.array(s["env_actions"]["eval"])
    assert train.shape == evaluated.shape == (5, 7) and np.abs(train - evaluated).max() > 1e-3
    text = "".join(_outputs(nb, "stream"))
    assert "sum of the K + 1 terms" in text and "(K + 1) × flow.sample's log-prob" in text
    assert len(_outputs(nb, "image/png")) == 3  # the cameras, the chains, the per-step log-probs
