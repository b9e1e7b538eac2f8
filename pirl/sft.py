"""Few-shot SFT: flow-matching fine-tuning of π0 / π0.5 on demonstrations, the starting point RL
then improves.

    python -m pirl.sft --config=configs/sft_metaworld.py --workdir=runs/sft_reach
    python -m pirl.train --config=... --config.model.checkpoint=runs/sft_reach

Demonstrations come from MetaWorld's scripted experts run in the EnvPool (``dataset=
"metaworld_expert"``) or from a local LeRobot-format dataset (``dataset=<path>``). Training samples
are (observation at t, actions t .. t+Ha−1), the chunk padded past the episode end by repeating the
last action, mapped to model inputs by the same transforms RL uses (``envsetup.env_transform``),
so the checkpoint's norm stats and conventions are exactly those pirl.train applies. The output
directory is an openpi checkpoint: ``params/`` plus ``assets/<asset_id>/norm_stats.json``.

Axis letters: N training samples, B batch, Ha action horizon, A model action dims, E env action
dims, S state dims.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import pathlib
import time
from collections.abc import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import flags
from jaxtyping import Float, UInt8

from pirl import checkpoints, cli, envsetup, experiment, runsetup, sharding
from pirl.data import augment as aug
from pirl.data import demos as demos_lib
from pirl.data import lerobot, transforms
from pirl.data import norm_stats as ns
from pirl.models import pi0, tokenizer

METRICS_FILE = "sft_metrics.jsonl"


# ---------------------------------------------------------------- demonstrations


def load_demos(exp: experiment.Experiment, sft: experiment.SFTSection) -> list[demos_lib.Episode]:
    """num_demos + holdout_demos episodes from the configured source."""
    count = sft.num_demos + sft.holdout_demos
    if sft.dataset == experiment.METAWORLD_EXPERT:
        if exp.env.sim != "metaworld":
            raise ValueError(
                f"sft.dataset={experiment.METAWORLD_EXPERT!r} needs env.sim='metaworld', got {exp.env.sim!r}"
            )
        # Goals come from all 50 MT1 variations, not only env.num_trials of them: few demos should
        # still cover varied layouts.
        sim = envsetup.sim_factory(exp.env, num_trials=50, max_steps=sft.demo_max_steps or None)
        sim = dataclasses.replace(sim, state="full")
        workers = 2
        num_envs = max(workers, exp.env.num_envs - exp.env.num_envs % workers)
        pool_cfg = envsetup.pool_config(exp.env, num_envs=num_envs, num_workers=workers, seed=sft.seed)
        return demos_lib.collect_metaworld(sim, pool_cfg, count, action_noise=sft.action_noise, seed=sft.seed)
    keys = lerobot.LeRobotKeys(images=sft.image_keys, state=sft.state_key, actions=sft.action_key)
    episodes = lerobot.load(sft.dataset, keys, max_episodes=count)
    if len(episodes) < count:
        raise ValueError(f"{sft.dataset} holds {len(episodes)} episodes; sft.num_demos + holdout_demos = {count}")
    return episodes


def transform_config(exp: experiment.Experiment, episodes: Sequence[demos_lib.Episode]) -> transforms.TransformConfig:
    """The RL transform for the demos' cameras and action size."""
    first = episodes[0]
    cameras = tuple(first.images)
    if not 1 <= len(cameras) <= len(transforms.IMAGE_KEYS):
        raise ValueError(f"demos have cameras {cameras}; the model takes 1 to {len(transforms.IMAGE_KEYS)}")
    for e in episodes:
        if tuple(e.images) != cameras or e.actions.shape[1] != first.actions.shape[1]:
            raise ValueError("demo episodes disagree on cameras or action size")
    return envsetup.env_transform(exp, cameras, first.actions.shape[1])


@dataclasses.dataclass
class Samples:
    """Every (episode, t) of a set of demos, flattened: images {camera: uint8 [N, H, W, 3]},
    state [N, S], chunk [N, Ha, E] (env actions t .. t+Ha−1, the last one repeated past the end),
    N prompts."""

    images: dict[str, UInt8[np.ndarray, "N H W 3"]]
    state: Float[np.ndarray, "N S"]
    chunk: Float[np.ndarray, "N Ha E"]
    prompts: list[str]

    def __len__(self) -> int:
        return len(self.state)


def action_chunks(actions: Float[np.ndarray, "T E"], horizon: int) -> Float[np.ndarray, "T Ha E"]:
    """chunk[t, k] = actions[min(t + k, T − 1)]."""
    steps = len(actions)
    index = np.minimum(np.arange(steps)[:, None] + np.arange(horizon)[None, :], steps - 1)
    return actions[index]


def make_samples(episodes: Sequence[demos_lib.Episode], horizon: int) -> Samples:
    return Samples(
        images={cam: np.concatenate([e.images[cam] for e in episodes]) for cam in episodes[0].images},
        state=np.concatenate([e.state for e in episodes]).astype(np.float32),
        chunk=np.concatenate([action_chunks(e.actions, horizon) for e in episodes]).astype(np.float32),
        prompts=[e.instruction for e in episodes for _ in range(len(e))],
    )


def compute_norm_stats(cfg: transforms.TransformConfig, samples: Samples) -> dict[str, ns.NormStats]:
    """Statistics of the state and of the action targets as the model sees them before
    normalization (relative to the state on delta dims, every chunk position counted)."""
    chunk = np.array(samples.chunk, np.float64)
    if cfg.delta_action_mask:
        d = len(cfg.delta_action_mask)
        chunk[..., :d] -= np.where(np.asarray(cfg.delta_action_mask), samples.state[:, None, :d], 0.0)
    return {"state": ns.compute(samples.state), "actions": ns.compute(chunk)}


def model_batch(
    cfg: transforms.TransformConfig,
    samples: Samples,
    index: np.ndarray,
    norm_stats: Mapping[str, ns.NormStats],
    tok: transforms.Tokenizer,
) -> tuple[dict, Float[np.ndarray, "B Ha A"]]:
    """Rows ``index`` of the samples → (model input dict, normalized padded action targets)."""
    state = samples.state[index]
    obs = transforms.make_model_inputs(
        cfg,
        {cam: frames[index] for cam, frames in samples.images.items()},
        state,
        [samples.prompts[i] for i in index],
        norm_stats,
        tok,
    )
    return obs, transforms.to_model_actions(cfg, samples.chunk[index], state, norm_stats)


# ---------------------------------------------------------------- model and optimizer


def lr_schedule(sft: experiment.SFTSection) -> optax.Schedule:
    """Linear warm-up to lr, then cosine decay to lr/10 at sft.steps (openpi's SFT schedule shape)."""
    return optax.warmup_cosine_decay_schedule(
        init_value=sft.lr / (sft.warmup_steps + 1),
        peak_value=sft.lr,
        warmup_steps=sft.warmup_steps,
        decay_steps=max(sft.steps, sft.warmup_steps + 1),
        end_value=sft.lr / 10,
    )


def make_optimizer(sft: experiment.SFTSection) -> optax.GradientTransformation:
    """AdamW (openpi's betas) after global-norm clipping, on lr_schedule."""
    return optax.chain(
        optax.clip_by_global_norm(sft.grad_clip),
        optax.adamw(lr_schedule(sft), b1=0.9, b2=0.95, eps=1e-8, weight_decay=sft.weight_decay),
    )


def _train_step(config: pi0.Pi0Config, optimizer, augment: bool, params, opt_state, obs: dict, actions, rng):
    k_aug, k_loss = jax.random.split(rng)
    observation = pi0.Observation(**obs)
    if augment:
        observation = observation.replace(images=aug.augment_images(k_aug, observation.images))

    def loss_fn(p):
        return jnp.mean(pi0.flow_loss(config, p, observation, actions, k_loss))

    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads)}
    return optax.apply_updates(params, updates), opt_state, metrics


@functools.partial(jax.jit, static_argnums=0)
def fixed_noise_errors(
    config: pi0.Pi0Config, params: dict, obs: dict, actions: jax.Array, noise: jax.Array, t: jax.Array
) -> Float[jax.Array, " A"]:
    """Flow-matching squared error per action dim, averaged over batch and horizon, for given
    noise [B, Ha, A] and times [B] (comparable across params). Its mean is pi0.flow_loss_at's."""
    observation = pi0.Observation(**obs)
    tt = t[:, None, None]
    x_t = tt * noise + (1 - tt) * actions
    v, _ = pi0.expert_pass(config, params, observation, pi0.prefix_pass(config, params, observation), x_t, t)
    return jnp.mean(jnp.square(v - (noise - actions)), axis=(0, 1))


def eval_noise(rng: jax.Array, shape: tuple[int, ...]) -> tuple[jax.Array, jax.Array]:
    """(ε, t) drawn as flow_loss draws them, once, for a fixed-noise score."""
    k_noise, k_time = jax.random.split(rng)
    noise = jax.random.normal(k_noise, shape)
    return noise, jax.random.beta(k_time, 1.5, 1.0, shape[:1]) * 0.999 + 0.001


# ---------------------------------------------------------------- fitting


def heldout_batch(
    cfg: transforms.TransformConfig,
    samples: Samples,
    norm_stats: Mapping[str, ns.NormStats],
    tok: transforms.Tokenizer,
    sft: experiment.SFTSection,
) -> tuple[dict, Float[np.ndarray, "B Ha A"]]:
    """The held-out samples fit scores: up to 4 batches' worth, evenly spaced over the episodes."""
    index = np.linspace(0, len(samples) - 1, min(len(samples), 4 * sft.batch_size)).round().astype(int)
    return model_batch(cfg, samples, index, norm_stats, tok)


def batch_indices(n: int, batch: int, rng: np.random.Generator):
    """Endless batches of sample indices: shuffled epochs without replacement (a batch larger
    than the data draws with replacement)."""
    while True:
        if batch > n:
            yield rng.integers(0, n, batch)
            continue
        order = rng.permutation(n)
        for start in range(0, n - batch + 1, batch):
            yield order[start : start + batch]


@dataclasses.dataclass
class FitResult:
    config: pi0.Pi0Config
    params: dict
    norm_stats: dict[str, ns.NormStats]
    history: list[dict]


def fit(
    exp: experiment.Experiment,
    sft: experiment.SFTSection,
    train: Sequence[demos_lib.Episode],
    heldout: Sequence[demos_lib.Episode] = (),
    *,
    log: Callable[[dict], None] | None = None,
) -> FitResult:
    """Trains on ``train`` for sft.steps; norm stats come from ``train``.

    History rows (every log_every steps, and the last): step, loss (mean over the steps since the
    previous row), grad_norm, lr, and with ``heldout`` demos heldout_loss: the flow loss on up to
    4 batches of their samples with noise fixed for the whole run, and heldout_action_loss: the same
    over the env's action dims only (the padded dims, whose target is the noise itself, dominate the
    full loss). Row 0 scores the initial params.
    """
    if not train:
        raise ValueError("no training demos")
    cfg = transform_config(exp, train)
    config, params = runsetup.float32_model_params(exp, sft.seed)
    samples = make_samples(train, config.action_horizon)
    stats = compute_norm_stats(cfg, samples)
    tok = tokenizer.load_tokenizer(exp.model.tokenizer, config.vocab_size)

    mesh = sharding.make_mesh(exp.mesh)
    if sft.batch_size % jax.process_count():
        raise ValueError(f"sft.batch_size={sft.batch_size} is not divisible by {jax.process_count()} processes")
    local_batch = sft.batch_size // jax.process_count()
    sharding.check_batch_divisible(mesh, sft.batch_size, "sft.batch_size")
    params = jax.device_put(params, sharding.param_shardings(mesh, params, exp.mesh.fsdp_min_bytes))
    optimizer = make_optimizer(sft)
    opt_state = jax.jit(optimizer.init)(params)
    step_fn = jax.jit(functools.partial(_train_step, config, optimizer, sft.augment), donate_argnums=(0, 1))
    schedule_lr = lr_schedule(sft)

    score = None
    if heldout:
        held_obs, held_actions = heldout_batch(cfg, make_samples(heldout, config.action_horizon), stats, tok, sft)
        noise, t = eval_noise(jax.random.key(sft.seed + 1), held_actions.shape)

        def score(p) -> dict:
            errors = np.asarray(fixed_noise_errors(config, p, held_obs, held_actions, noise, t))
            env_dims = errors[: cfg.env_action_dim]
            return {"heldout_loss": float(errors.mean()), "heldout_action_loss": float(env_dims.mean())}

    history: list[dict] = []

    def record(row: dict):
        history.append(row)
        if log is not None:
            log(row)

    if score is not None:
        record({"step": 0, **score(params)})
    batches = batch_indices(len(samples), local_batch, np.random.default_rng([sft.seed, jax.process_index()]))
    rng = jax.random.key(sft.seed)
    losses, norms, start = [], [], time.perf_counter()
    with jax.set_mesh(mesh):
        for step in range(1, sft.steps + 1):
            index = next(batches)
            obs, actions = model_batch(cfg, samples, index, stats, tok)
            obs, actions = sharding.global_batch(mesh, (obs, actions))
            params, opt_state, metrics = step_fn(params, opt_state, obs, actions, jax.random.fold_in(rng, step))
            losses.append(metrics["loss"])
            norms.append(metrics["grad_norm"])
            if step % sft.log_every == 0 or step == sft.steps:
                elapsed = time.perf_counter() - start
                row = {
                    "step": step,
                    "loss": float(np.mean(jax.device_get(losses))),
                    "grad_norm": float(np.mean(jax.device_get(norms))),
                    "lr": float(schedule_lr(step - 1)),
                    "s_per_step": elapsed / len(losses),
                }
                if score is not None:
                    row.update(score(params))
                record(row)
                losses, norms, start = [], [], time.perf_counter()
    return FitResult(config, params, stats, history)


def save(out_dir: str | pathlib.Path, result: FitResult, asset_id: str) -> pathlib.Path:
    """Writes the openpi checkpoint (params + norm stats) and the history as JSON lines."""
    out = pathlib.Path(out_dir).expanduser().resolve()
    if (out / "params").exists():
        raise FileExistsError(f"{out / 'params'} already exists: choose an empty output directory")
    checkpoints.save_openpi(out, result.params, norm_stats=result.norm_stats, asset_id=asset_id)
    if jax.process_index() == 0:
        (out / METRICS_FILE).write_text("".join(json.dumps(row) + "\n" for row in result.history))
    return out


def run(
    exp: experiment.Experiment,
    sft: experiment.SFTSection,
    out_dir: str | pathlib.Path,
    *,
    episodes: Sequence[demos_lib.Episode] | None = None,
    log: Callable[[dict], None] | None = None,
) -> pathlib.Path:
    """Demos (``episodes``, or loaded per ``sft``) → fitted params → openpi checkpoint at out_dir.

    The last sft.holdout_demos episodes are held out for the held-out score. Returns out_dir, a
    directory pirl.train starts from with model.checkpoint=out_dir.
    """
    out = pathlib.Path(out_dir).expanduser().resolve()
    if (out / "params").exists():
        raise FileExistsError(f"{out / 'params'} already exists: choose an empty output directory")
    episodes = list(episodes) if episodes is not None else load_demos(exp, sft)
    if len(episodes) <= sft.holdout_demos:
        raise ValueError(f"{len(episodes)} demos leave none for training after {sft.holdout_demos} held out")
    cut = len(episodes) - sft.holdout_demos
    result = fit(exp, sft, episodes[:cut], episodes[cut:], log=log)
    return save(out, result, sft.asset_id)


def warm_start(
    exp: experiment.Experiment, sft: experiment.SFTSection, workdir: str | pathlib.Path
) -> experiment.Experiment:
    """A recipe's SFT stage before RL: runs it into <workdir>/sft once (kept for resumes) and
    returns ``exp`` starting from that checkpoint."""
    out = pathlib.Path(workdir) / "sft"
    if not (out / "params").is_dir():
        run(exp, sft, out)
    return dataclasses.replace(exp, model=dataclasses.replace(exp.model, checkpoint=str(out)))


# ---------------------------------------------------------------- command line


_COLUMNS = (  # (history key, header, width, format)
    ("loss", "loss", 9, ".4f"),
    ("heldout_loss", "heldout", 9, ".4f"),
    ("heldout_action_loss", "heldout_act", 12, ".4f"),
    ("grad_norm", "grad_norm", 10, ".3f"),
    ("lr", "lr", 9, ".2e"),
    ("s_per_step", "s/step", 8, ".3f"),
)
TABLE_HEADER = " ".join([f"{'step':>7}"] + [f"{head:>{width}}" for _, head, width, _ in _COLUMNS])


def format_row(row: dict) -> str:
    """One line of the loss table (blank where a row has no value)."""
    cells = [f"{row['step']:>7d}"]
    cells += [f"{row[key]:>{width}{fmt}}" if key in row else " " * width for key, _, width, fmt in _COLUMNS]
    return " ".join(cells)


def main(argv: list[str]) -> None:
    del argv
    exp, extra = cli.to_experiment(flags.FLAGS.config, extra={"sft": experiment.SFTSection})
    sft = extra["sft"]
    print(TABLE_HEADER, flush=True)
    out = run(exp, sft, flags.FLAGS.workdir, log=lambda row: print(format_row(row), flush=True))
    print(f"checkpoint: {out}  (train from it with --config.model.checkpoint={out})")


if __name__ == "__main__":
    cli.define_config_flag()
    flags.DEFINE_string("workdir", None, "output directory: the openpi checkpoint and sft_metrics.jsonl", required=True)
    cli.run(main)
