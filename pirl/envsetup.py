"""The simulators, worker pools and observation transforms an ``Experiment``'s sections ask for:
picklable simulator configs for the pools, the eval section as it runs, the pool's config, and
the transform between a simulator's observations and the model's inputs."""

from __future__ import annotations

import dataclasses

from pirl.data import transforms
from pirl.envs import libero, maniskill, metaworld, pool, toy
from pirl.experiment import EnvSection, EvalSection, Experiment


def sim_factory(
    env: EnvSection, *, max_steps: int | None = None, num_trials: int | None = None, warmup_steps: int | None = None
):
    """The pool factory (a picklable simulator config) for the env section; ``max_steps`` −1 keeps
    the simulator's own limit where it has one (LIBERO)."""
    steps = max_steps or env.max_steps
    trials = num_trials or env.num_trials
    warmup = env.warmup_steps if warmup_steps is None or warmup_steps < 0 else warmup_steps
    if env.sim == "metaworld":
        kw = dict(camera=env.camera) if env.camera else {}
        return metaworld.MetaWorldConfig(
            benchmark=env.task,
            image_size=env.image_size,
            render=env.render,
            max_steps=steps,
            num_trials=trials,
            warmup_steps=warmup,
            seed=env.seed,
            reward="dense" if env.reward_mode == "dense" else "success",
            fast_render=env.fast_render,
            **kw,
        )
    if env.sim == "libero":
        return libero.LiberoConfig(
            suite=env.task,
            task_subset=None,
            image_size=env.image_size,
            render=env.render,
            max_steps=None if steps < 0 else steps,
            warmup_steps=warmup,
            num_trials=trials,
            seed=env.seed,
        )
    if env.sim == "maniskill":
        return maniskill.ManiSkillConfig(
            tasks=tuple(t.strip() for t in env.task.split(",")),
            image_size=env.image_size,
            render=env.render,
            camera=env.camera or None,
            max_steps=steps,
            num_trials=trials,
            binarize_gripper=0.5,
            control_mode=env.control_mode or None,
            reward_mode=env.reward_mode or "sparse",
            backend=env.backend,
        )
    return toy.ToyConfig(num_trials=trials, max_steps=steps, image_size=env.image_size[0])


def resolve_eval(section: EvalSection, env: EnvSection) -> EvalSection:
    """The eval section as it runs: under protocol "openpi_libero" one env and one worker per
    evaluated task, so that each env runs its task's trials in order, as openpi's script does
    (its scenes depend on that order, see ``libero.LiberoConfig.seed_every_reset``)."""
    if section.protocol != "openpi_libero":
        return section
    n = len(section.tasks) or len(libero.suite_tasks(env.task))
    return dataclasses.replace(section, num_envs=n, num_workers=n)


def eval_sim_factory(env: EnvSection, section: EvalSection):
    """The simulator config of evaluation: the env section's with the eval section's step limit,
    trials and warm-up; under protocol "openpi_libero" also openpi's step limits, seeding and
    render size (examples/libero/main.py)."""
    factory = sim_factory(
        dataclasses.replace(env, auto_reset=False, num_stages=1),
        max_steps=section.max_steps or env.max_steps,
        num_trials=section.num_trials,
        warmup_steps=section.warmup_steps,
    )
    if section.protocol == "openpi_libero":
        size = libero.OPENPI_RESOLUTION
        factory = dataclasses.replace(
            factory,
            limits="openpi",
            max_steps=None,
            seed=libero.OPENPI_SEED,
            seed_every_reset=False,
            image_size=(size, size),
        )
    return factory


def pool_config(
    env: EnvSection,
    *,
    num_envs: int | None = None,
    num_workers: int | None = None,
    seed: int = 0,
    env_offset: int = 0,
):
    """The pool of ``num_envs`` envs on ``num_workers`` workers (default the section's); a host of a
    multi-host job passes its share and ``env_offset``, the global index of its first env."""
    workers = num_workers or env.num_workers
    per_worker = (num_envs or env.num_envs) // workers
    gl = env.gl or None
    if gl is None and env.render and env.sim in ("metaworld", "libero"):
        # MuJoCo renders headless through EGL (on the GPU where there is one); every sim draws in
        # its own context, so a worker may hold several.
        gl = "egl"
    return pool.PoolConfig(
        num_workers=workers,
        envs_per_worker=per_worker,
        auto_reset=env.auto_reset,
        seed=seed,
        num_stages=env.num_stages,
        gl=gl,
        timeout_s=env.timeout_s,
        env_offset=env_offset,
        finish_chunks=env.finish_chunks,
    )


def env_transform(exp: Experiment, camera_names: tuple[str, ...], env_action_dim: int) -> transforms.TransformConfig:
    """Observation/action conventions between the pool's sims and the model.

    The adapters already deliver upright images, so no orientation is applied here. Cameras fill
    the model's slots in order (main → base, second → left wrist). π0 on LIBERO was trained on
    delta actions for the 6 arm dims; π0.5 and the other sims use absolute actions.
    """
    model = exp.model.pi0_config()
    slots = transforms.IMAGE_KEYS[: len(camera_names)]
    delta = transforms.bool_mask(6, -1) if exp.env.sim == "libero" and not model.pi05 else ()
    return transforms.TransformConfig(
        cameras=tuple(zip(camera_names, slots, strict=True)),
        env_action_dim=env_action_dim,
        image_size=(model.image_size, model.image_size),
        orientation="none",
        norm="quantile" if model.pi05 else "zscore",
        delta_action_mask=delta,
        model_action_dim=model.action_dim,
        action_chunk=exp.policy.num_action_chunks,
        max_token_len=model.max_token_len,
        discrete_state_input=model.discrete_state_input,
    )


def task_names(factory) -> list[str]:
    """A short name per task id of a simulator config (for per-task metrics and tables)."""
    if hasattr(factory, "task_names"):  # MetaWorld
        return list(factory.task_names())
    if hasattr(factory, "tasks") and callable(factory.tasks):  # LIBERO: (suite, index)
        return [f"{suite}/{idx}" for suite, idx in factory.tasks()]
    if hasattr(factory, "tasks"):  # ManiSkill env ids
        return list(factory.tasks)
    return [str(t) for t in range(factory.spec().num_tasks)]
