"""LIBERO (robosuite 1.4 + hf-libero) adapter: spatial, object, goal, 10, 90 and the 130-task union.

Init id (task, trial): task indexes the suite's tasks in LIBERO's default order (for "libero_130":
spatial, object, goal, 10, then 90); trial indexes the task's shipped init states (50 each).

Observation, as openpi serves LIBERO:
  images "main" (agentview) and "wrist" (robot0_eye_in_hand), both rotated 180 degrees, since
  robosuite renders them upside down and mirrored;
  state (8,) float32 = [eef_pos xyz (3), eef orientation as an axis-angle vector (3),
  gripper finger qpos (2)], the axis-angle computed from robosuite's (x, y, z, w) quaternion by
  ``quat_to_axis_angle``.
Action: 7-d in [-1, 1] (OSC pose delta + gripper, -1 open / +1 closed).
Reward: +1 on the first step the BDDL goal holds; the episode terminates there.

Setup the package itself lacks for unattended use:
- ``import libero.libero`` asks questions on stdin when it finds no config file; ``write_config``
  writes one and ``LIBERO_CONFIG_PATH`` points at it before the first import.
- Scene/object assets are not in the wheel. ``find_assets`` looks for them where LIBERO users
  keep them: ``assets_dir`` / $PIRL_LIBERO_ASSETS, else the package's own ``libero/libero/assets``
  (a source install of LIBERO), else ``~/.cache/libero/assets`` (where hf-libero, the build LeRobot
  uses, downloads the Hugging Face dataset ``lerobot/libero-assets``); with none it fails with one
  line saying how to get them, instead of LIBERO's download attempt at env creation.
- Rendering: MuJoCo via MUJOCO_GL=egl or osmesa. robosuite draws with whichever GL context is
  current (the most recently created one in the process, or none after another env freed its
  own), so every sim makes its own context current before anything renders; any number of envs
  may then share a worker under either backend.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os

import numpy as np
from jaxtyping import Float

from pirl.envs import base

SUITES = ("libero_spatial", "libero_object", "libero_goal", "libero_10", "libero_90")
NUM_TASKS = {"libero_spatial": 10, "libero_object": 10, "libero_goal": 10, "libero_10": 10, "libero_90": 90}
# Episode limits (after warm-up) per suite of the RL recipes, long enough for the demonstrations of
# each suite.
MAX_STEPS = {
    "libero_spatial": 240,
    "libero_object": 280,
    "libero_goal": 320,
    "libero_10": 480,
    "libero_90": 400,
}
# openpi's LIBERO evaluation (examples/libero/main.py ``eval_libero``): per-suite step limits (its
# comments: the longest training demonstration has 193, 254, 270, 505 and 373 steps), the no-op
# steps it waits first, the actions it executes per chunk, its trials per task, its seed, and the
# resolution it renders at (``LIBERO_ENV_RESOLUTION``, the training data's).
OPENPI_MAX_STEPS = {
    "libero_spatial": 220,
    "libero_object": 280,
    "libero_goal": 300,
    "libero_10": 520,
    "libero_90": 400,
}
OPENPI_WAIT_STEPS = 10
OPENPI_REPLAN_STEPS = 5
OPENPI_TRIALS = 50
OPENPI_SEED = 7
OPENPI_RESOLUTION = 256
LIMITS = {"rl": MAX_STEPS, "openpi": OPENPI_MAX_STEPS}
UNION = "libero_130"
# openpi's no-op: no motion, gripper open.
NOOP = np.array([0, 0, 0, 0, 0, 0, -1], np.float32)
ASSETS_ENV = "PIRL_LIBERO_ASSETS"
# hf-libero 0.1.4, libero/libero/utils/download_utils.py: HF_ASSETS_REPO_ID and the cache folder
# that download_assets_from_huggingface() fills (LeRobot's LIBERO env installs hf-libero).
ASSETS_REPO = "lerobot/libero-assets"
ASSETS_CACHE = os.path.join("~", ".cache", "libero", "assets")
ASSETS_HELP = (
    f"run third_party/install_sims.sh on a machine that reaches the Hugging Face Hub (it downloads "
    f"{ASSETS_REPO} to {ASSETS_CACHE}), or set {ASSETS_ENV} to a folder holding them"
)


def quat_to_axis_angle(quat: Float[np.ndarray, " 4"]) -> Float[np.ndarray, " 3"]:
    """(x, y, z, w) unit quaternion -> axis * angle, angle = 2 acos(w) in [0, 2 pi]."""
    q = np.asarray(quat, np.float64)
    w = np.clip(q[3], -1.0, 1.0)
    s = np.sqrt(1.0 - w * w)  # = |sin(angle / 2)|
    if s < 1e-8:  # no rotation: the axis is undefined, the vector is zero
        return np.zeros(3)
    return q[:3] * (2.0 * np.arccos(w) / s)


def suite_tasks(suite: str) -> list[tuple[str, int]]:
    """(suite, index within suite) for each task id of ``suite`` (the union lists all five)."""
    if suite == UNION:
        return [(s, i) for s in SUITES if s != "libero_90" for i in range(NUM_TASKS[s])] + [
            ("libero_90", i) for i in range(90)
        ]
    if suite not in NUM_TASKS:
        raise ValueError(f"unknown LIBERO suite {suite!r}; choose from {(*SUITES, UNION)}")
    return [(suite, i) for i in range(NUM_TASKS[suite])]


def default_config_dir() -> str:
    return os.path.join(os.path.expanduser("~"), ".cache", "pirl", "libero")


def has_assets(path: str) -> bool:
    """Whether ``path`` looks like LIBERO's assets folder (it has the ``scenes`` subfolder)."""
    return os.path.isdir(os.path.join(path, "scenes"))


def package_assets_dir() -> str | None:
    """``libero/libero/assets`` inside the installed LIBERO package (present in source installs);
    None when LIBERO is not installed. Imports nothing from LIBERO."""
    spec = importlib.util.find_spec("libero")
    if spec is None or not spec.submodule_search_locations:
        return None
    return os.path.join(next(iter(spec.submodule_search_locations)), "libero", "assets")


def find_assets(assets_dir: str | None = None) -> str:
    """The absolute path of LIBERO's scene/object assets: ``assets_dir``, else $PIRL_LIBERO_ASSETS,
    else the LIBERO package's own folder, else hf-libero's download cache (~/.cache/libero/assets).

    Raises FileNotFoundError (one line) when a named folder lacks them or none is found."""
    named = assets_dir or os.environ.get(ASSETS_ENV)
    if named:
        path = os.path.abspath(os.path.expanduser(named))
        if not has_assets(path):
            source = "assets_dir" if assets_dir else f"${ASSETS_ENV}"
            raise FileNotFoundError(f"LIBERO assets dir {path!r} ({source}) has no 'scenes' folder; {ASSETS_HELP}")
        return path
    candidates = [package_assets_dir(), os.path.expanduser(ASSETS_CACHE)]
    for path in filter(None, candidates):
        if has_assets(path):
            return os.path.abspath(path)
    searched = ", ".join(filter(None, candidates))
    raise FileNotFoundError(f"LIBERO assets not found ({ASSETS_ENV} unset; searched {searched}): {ASSETS_HELP}")


def write_config(config_dir: str, assets_dir: str | None = None) -> str:
    """Writes ``config_dir/config.yaml`` pointing at the installed package's BDDL files and init
    states (and ``assets_dir`` if given); returns the file path. Imports nothing from LIBERO."""
    # Late: PyYAML is needed only to configure LIBERO.
    import yaml

    package_assets = package_assets_dir()
    if package_assets is None:
        raise ImportError("LIBERO is not installed; run third_party/install_sims.sh")
    root = os.path.dirname(package_assets)
    paths = {
        "benchmark_root": root,
        "bddl_files": os.path.join(root, "bddl_files"),
        "init_states": os.path.join(root, "init_files"),
        "datasets": os.path.join(os.path.dirname(root), "datasets"),
        "assets": os.path.abspath(assets_dir) if assets_dir else package_assets,
    }
    os.makedirs(config_dir, exist_ok=True)
    path = os.path.join(config_dir, "config.yaml")
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        yaml.safe_dump(paths, f)
    os.replace(tmp, path)  # atomic: workers starting together never read half a file
    return path


def import_libero(assets_dir: str):
    """Imports LIBERO without any prompt, pointed at ``assets_dir`` (see ``find_assets``).

    Returns (benchmark module, rendering env class, non-rendering env class)."""
    config_dir = os.environ.get("LIBERO_CONFIG_PATH") or default_config_dir()
    if not os.path.exists(os.path.join(config_dir, "config.yaml")):
        write_config(config_dir, assets_dir)
    os.environ["LIBERO_CONFIG_PATH"] = config_dir
    # Late: LIBERO is optional and heavy, and must see LIBERO_CONFIG_PATH (set above) on import.
    import libero.libero as libero_root
    from libero.libero import benchmark
    from libero.libero.envs import OffScreenRenderEnv
    from libero.libero.envs.env_wrapper import ControlEnv

    # hf-libero resolves assets through get_assets_path(), which returns this cache when the folder
    # exists and otherwise downloads (not the config's "assets" key).
    libero_root._assets_path_cache = os.path.abspath(assets_dir)
    return benchmark, OffScreenRenderEnv, ControlEnv


@dataclasses.dataclass(frozen=True)
class LiberoConfig:
    """LIBERO tasks as a pool factory.

    Attributes:
      suite: one of SUITES or "libero_130".
      task_subset: if set, only these task indices of the suite (task id k means task_subset[k]).
      image_size: (H, W) of both cameras.
      render: False gives observations with no images (robosuite skips rendering).
      assets_dir: folder with LIBERO's scene/object assets; None looks them up (``find_assets``).
      max_steps: None takes the ``limits`` table's value for the suite (the union: each task its
        own suite's limit).
      limits: "rl" (MAX_STEPS, the RL recipes') or "openpi" (OPENPI_MAX_STEPS, openpi's evaluation).
      warmup_steps: no-op steps after reset (objects settle), not counted.
      num_trials: init states used per task (<= 50).
      seed: seed of numpy's global RNG, from which LIBERO places fixtures on every reset (the init
        state then overrides the objects' placement).
      seed_every_reset: True seeds before every reset, so an init id is one scene whatever the env
        did before. False is openpi's evaluation: it seeds once when a task's env is made, then runs
        trials 0, 1, ... in order, each reset drawing on from where the last one left off; here the
        seed is applied on every reset of trial 0, and each sim keeps its own copy of the RNG
        state, so sims sharing a process do not draw from one another's stream. An env then
        matches openpi's episode k only when it ran trials 0..k-1 of the same task before.
    """

    suite: str = "libero_spatial"
    task_subset: tuple[int, ...] | None = None
    image_size: tuple[int, int] = (224, 224)
    render: bool = True
    assets_dir: str | None = None
    max_steps: int | None = None
    limits: str = "rl"
    warmup_steps: int = 15
    num_trials: int = 50
    seed: int = 0
    seed_every_reset: bool = True

    def __post_init__(self):
        self.tasks()
        if self.limits not in LIMITS:
            raise ValueError(f"limits must be one of {tuple(LIMITS)}, got {self.limits!r}")
        if not 1 <= self.num_trials <= 50:
            raise ValueError(f"num_trials must be in [1, 50] (init states per task), got {self.num_trials}")

    def resolved_assets_dir(self) -> str:
        return find_assets(self.assets_dir)

    def tasks(self) -> list[tuple[str, int]]:
        """(suite, index within suite) of every task id."""
        tasks = suite_tasks(self.suite)
        if self.task_subset is None:
            return tasks
        bad = [k for k in self.task_subset if not 0 <= k < len(tasks)]
        if bad or not self.task_subset:
            raise ValueError(f"task_subset {self.task_subset} must be non-empty indices into {len(tasks)} tasks")
        return [tasks[k] for k in self.task_subset]

    def task_max_steps(self, task: int) -> int:
        return self.max_steps or LIMITS[self.limits][self.tasks()[task][0]]

    def spec(self) -> base.EnvSpec:
        tasks = self.tasks()
        h, w = self.image_size
        cams = (base.CameraSpec("main", h, w), base.CameraSpec("wrist", h, w)) if self.render else ()
        return base.EnvSpec(
            cameras=cams,
            state_dim=8,
            action_dim=7,
            max_steps=max(self.task_max_steps(t) for t in range(len(tasks))),
            num_tasks=len(tasks),
            num_trials=self.num_trials,
        )

    def __call__(self, worker_index: int, num_envs: int) -> base.SerialGroup:
        return base.SerialGroup([LiberoSim(self) for _ in range(num_envs)])


CAMERA_OBSERVABLES = {"main": "agentview_image", "wrist": "robot0_eye_in_hand_image"}


class _LazyCamera:
    """Stands in for a robosuite camera sensor: renders through the real one only while ``on``,
    else returns a blank frame. robosuite samples each observable once per control step at a phase
    set by its own timers; swapping the sensor (not disabling the observable, which resets the
    timers) leaves that schedule, and so every observed frame and state, exactly as it was."""

    def __init__(self, real, shape: tuple[int, int]):
        self.real, self.on = real, False
        self.__modality__ = real.__modality__  # what robosuite's sensor decorator sets
        self.blank = np.zeros((*shape, 3), np.uint8)

    def __call__(self, obs_cache):
        return self.real(obs_cache) if self.on else self.blank


def _upright(frame: np.ndarray) -> np.ndarray:
    """robosuite's frames come out rotated by 180 degrees."""
    return np.ascontiguousarray(frame[::-1, ::-1])


class LiberoSim:
    """One LIBERO env; the robosuite env is rebuilt when a reset switches task.

    Cameras render only on steps whose observation is asked for (``step(observe=True)``, and the
    step that reaches the step limit); ``observe()`` renders the current state for an episode that
    ended by success earlier in a chunk (robosuite's own frame of that step was sampled after its
    first physics substep, ours after its last; the policy never sees either).
    """

    def __init__(self, cfg: LiberoConfig):
        self.cfg, self.spec = cfg, cfg.spec()
        self.benchmark, render_cls, plain_cls = import_libero(cfg.resolved_assets_dir())
        # OffScreenRenderEnv always builds a renderer; without images the base class skips it.
        self.env_cls = render_cls if cfg.render else plain_cls
        self.tasks = cfg.tasks()
        self._suites: dict[str, object] = {}
        self.env, self.task = None, -1
        self.prev_success, self.t, self.limit = False, 0, 0
        self.cams: dict[str, _LazyCamera] = {}
        self.last_raw: dict | None = None
        self._np_state = None  # this sim's numpy global RNG state after its last reset

    def _suite(self, name: str):
        if name not in self._suites:
            self._suites[name] = self.benchmark.get_benchmark_dict()[name]()
        return self._suites[name]

    def _make(self, task: int):
        suite_name, idx = self.tasks[task]
        suite = self._suite(suite_name)
        if self.task != task:
            if self.env is not None:
                self.env.close()
                self.env = None
            h, w = self.cfg.image_size
            kw = dict(camera_heights=h, camera_widths=w)
            if not self.cfg.render:
                kw.update(has_renderer=False, has_offscreen_renderer=False, use_camera_obs=False)
            self.env = self.env_cls(bddl_file_name=suite.get_task_bddl_file_path(idx), **kw)
            self.task = task
            self.init_states = suite.get_task_init_states(idx)
            self.instruction = suite.get_task(idx).language
        return self.env

    def _obs(self, raw: dict, images: dict | None = None) -> base.Obs:
        """``images`` None reads the frames robosuite sampled into ``raw``; {} gives none."""
        self.last_raw = raw
        if images is None and self.cfg.render:
            images = {key: _upright(raw[name]) for key, name in CAMERA_OBSERVABLES.items()}
        state = np.concatenate(
            [raw["robot0_eef_pos"], quat_to_axis_angle(raw["robot0_eef_quat"]), raw["robot0_gripper_qpos"]]
        )
        return base.Obs(images=images or {}, state=state.astype(np.float32))

    def _wrap_cameras(self, env):
        """Installs the lazy camera sensors (a hard reset brings fresh real ones each time)."""
        if not self.cfg.render:
            return
        robo = env.env  # the robosuite env inside LIBERO's wrapper
        for key, name in CAMERA_OBSERVABLES.items():
            self.cams[key] = _LazyCamera(robo._observables[name]._sensor, self.cfg.image_size)
            robo.modify_observable(name, "sensor", self.cams[key])

    def _render(self, on: bool):
        for cam in self.cams.values():
            cam.on = on

    def _gl_current(self):
        """Makes this sim's GL context current: robosuite renders with whichever context is current."""
        context = getattr(self.env.env.sim, "_render_context_offscreen", None)
        if context is not None:
            context.gl_ctx.make_current()

    def _reset_scene(self, env, trial: int):
        """``env.reset()`` with numpy's global RNG, from which LIBERO places fixtures (not part of
        the saved init state) on every hard reset, seeded as ``seed_every_reset`` says. Only resets
        draw from it (stepping does not), so keeping the state after each reset keeps the stream."""
        if self.cfg.seed_every_reset or trial == 0 or self._np_state is None:
            env.seed(self.cfg.seed)  # LIBERO's seed is np.random.seed
        else:
            np.random.set_state(self._np_state)  # noqa: NPY002 (LIBERO draws from the legacy global RNG)
        self._gl_current()  # a reset without a rebuild renders with the present context
        env.reset()
        self._np_state = np.random.get_state()  # noqa: NPY002

    def reset(self, task: int, trial: int) -> tuple[base.Obs, str]:
        env = self._make(task)
        self._reset_scene(env, trial)
        self._gl_current()  # a hard reset rebuilt the sim and its context
        self._wrap_cameras(env)
        warmup = self.cfg.warmup_steps
        self._render(warmup == 0)
        raw = env.set_init_state(self.init_states[trial])
        for i in range(warmup):
            self._render(i == warmup - 1)
            raw, *_ = env.step(NOOP)
        self.prev_success, self.t, self.limit = False, 0, self.cfg.task_max_steps(task)
        return self._obs(raw), self.instruction

    def step(self, action, observe: bool = True) -> base.StepOut:
        observe = observe or self.t + 1 >= self.limit  # an episode's last step is always observed
        self._render(observe)
        if observe:
            self._gl_current()
        raw, _, done, _ = self.env.step(np.asarray(action, np.float64))
        self.t += 1
        success = bool(done)  # LIBERO's done is exactly "the BDDL goal holds"
        reward = float(success and not self.prev_success)
        self.prev_success = success
        obs = self._obs(raw, None if observe else {})
        return base.StepOut(obs, reward, success, self.t >= self.limit, success)

    def observe(self) -> base.Obs:
        """The current state's observation, cameras rendered now (robosuite's timers untouched)."""
        if not self.cfg.render:
            return self._obs(self.last_raw)
        self._gl_current()
        images = {key: _upright(cam.real({})) for key, cam in self.cams.items()}
        return self._obs(self.last_raw, images)

    def close(self):
        if self.env is not None:
            self.env.close()
            self.env = None
