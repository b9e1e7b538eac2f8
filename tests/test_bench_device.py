"""The prepared accelerator run (launch/device_check.sh → pirl.bench.device) and its pieces: the
FLOP count, the HLO loop check, the wheel-set check, the time boxes, and the whole run dry."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import zipfile

import jax
import jax.numpy as jnp
import pytest

from pirl.bench import device, flops, hlo
from pirl.models import pi0

REPO = pathlib.Path(__file__).resolve().parents[1]


def _xla_flops(fn, *args) -> float:
    cost = jax.jit(fn).lower(*args).compile().cost_analysis()
    return float((cost[0] if isinstance(cost, list) else cost)["flops"])


# ---------------------------------------------------------------- FLOPs


def test_flops_equal_xla_for_a_program_without_loops():
    # A matrix product and a patch-embedding convolution (SigLIP's shape of op), nothing else:
    # XLA's cost analysis counts exactly these FLOPs, so both counts must agree.
    x = jnp.ones((4, 28, 28, 3))
    k = jnp.ones((14, 14, 3, 16))
    a, b = jnp.ones((5, 7, 11)), jnp.ones((5, 11, 13))

    def f(x, k, a, b):
        y = jax.lax.conv_general_dilated(x, k, (14, 14), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return y, jnp.einsum("bij,bjk->bik", a, b)

    ours = flops.count(f, x, k, a, b)
    # By hand: conv 2 · (4·2·2·16 outputs) · (14·14·3 MACs each); batched dot 2 · 5·7·11·13.
    assert ours.flops == 2 * 4 * 2 * 2 * 16 * 14 * 14 * 3 + 2 * 5 * 7 * 11 * 13
    assert ours.flops == _xla_flops(f, x, k, a, b)
    assert ours.loops == 0


def test_flops_count_every_scan_iteration_where_xla_counts_one():
    w = jnp.ones((64, 64))

    def f(x):
        return jax.lax.scan(lambda c, _: (jnp.tanh(c @ w), None), x, length=10)[0]

    x = jnp.ones((8, 64))
    one = 2 * 8 * 64 * 64
    assert flops.count(f, x).flops == 10 * one
    # XLA counts the loop body once (plus the tanh): the reason pirl.bench counts from the jaxpr.
    assert one <= _xla_flops(f, x) < 2 * one


def test_flops_of_the_sampler_are_prefix_plus_k_expert_steps():
    config = pi0.Pi0Config.tiny()
    params = pi0.param_shapes(config)
    obs = jax.eval_shape(lambda: pi0.fake_observation(config, 2))
    noise = jax.ShapeDtypeStruct((2, config.action_horizon, config.action_dim), jnp.float32)
    sample = jax.jit(pi0.sample_actions, static_argnames=("config", "num_steps"))
    k3, k7 = (flops.count(sample, config, params, obs, noise, num_steps=k).flops for k in (3, 7))
    prefix = flops.count(lambda p, o: pi0.prefix_pass(config, p, o), params, obs).flops
    shapes = jax.eval_shape(lambda p, o: pi0.prefix_pass(config, p, o), params, obs)
    t = jax.ShapeDtypeStruct((2,), jnp.float32)
    step = flops.count(lambda p, o, c, x, t: pi0.expert_pass(config, p, o, c, x, t), params, obs, shapes, noise, t)
    assert k3 == prefix + 3 * step.flops
    assert k7 - k3 == 4 * step.flops


# ---------------------------------------------------------------- HLO loop structure


def _tiny_sampler_text(fn):
    config = pi0.Pi0Config.tiny()
    params = pi0.init_params(config, jax.random.key(0))
    obs = pi0.fake_observation(config, 2, jax.random.key(1))
    noise = jax.random.normal(jax.random.key(2), (2, config.action_horizon, config.action_dim))
    return jax.jit(lambda p, o, n: fn(config, p, o, n)).lower(params, obs, noise).compile().as_text()


def test_hlo_check_sees_the_k_steps_in_one_loop_that_reuses_the_prefix():
    text = _tiny_sampler_text(lambda c, p, o, n: pi0.sample_actions(c, p, o, n, num_steps=5))
    s = hlo.sampler_structure(text, 5)
    assert s["k_loop"] and s["kv_reused"]
    assert s["convolutions"] == 1  # SigLIP's patch embedding, once
    assert "5[" in s["loops"]  # the step loop holds the expert's layer loop


def test_hlo_check_flags_a_prefix_recomputed_inside_the_step_loop():
    def recompute(c, p, o, n):
        # The images depend on the carry, so XLA cannot hoist the prefix out of the loop.
        def step(x, _):
            seen = o.replace(images={k: v + 1e-3 * jnp.mean(x) for k, v in o.images.items()})
            return pi0.sample_actions(c, p, seen, x, num_steps=1), None

        return jax.lax.scan(step, n, length=5)[0]

    s = hlo.sampler_structure(_tiny_sampler_text(recompute), 5)
    assert s["k_loop"] and not s["kv_reused"]


def test_hlo_check_flags_unrolled_steps():
    def unrolled(c, p, o, n):
        prefix = pi0.prefix_pass(c, p, o)
        for i in range(5):
            v, _ = pi0.expert_pass(c, p, o, prefix, n, jnp.full((n.shape[0],), 1.0 - i / 5))
            n = n - v / 5
        return n

    s = hlo.sampler_structure(_tiny_sampler_text(unrolled), 5)
    assert not s["k_loop"] and not s["kv_reused"]


def test_hlo_check_reads_gpu_style_text():
    # A cuDNN convolution in the step loop's body, reached through a fusion: not a reused prefix.
    text = """HloModule m

%fused (p: f32[2]) -> f32[2] {
  %c = f32[2] custom-call(f32[2] %p), custom_call_target="__cudnn$convForward"
}

%body (b: (s32[], f32[2])) -> (s32[], f32[2]) {
  %f = f32[2] fusion(f32[2] %x), kind=kCustom, calls=%fused
}

%cond (b: (s32[], f32[2])) -> pred[] {
  %lt = pred[] compare(s32[] %i, s32[] %n), direction=LT
}

ENTRY %main (a: f32[2]) -> f32[2] {
  %w = (s32[], f32[2]) while((s32[], f32[2]) %t), condition=%cond, body=%body, backend_config=TRIP
}
""".replace("TRIP", '{"known_trip_count":{"n":"10"}}')
    s = hlo.sampler_structure(text, 10)
    assert s == {"k_loop": True, "kv_reused": False, "loops": "10", "convolutions": 1}


# ---------------------------------------------------------------- the wheel set


def _wheel(folder: pathlib.Path, name: str, version: str, requires: list[str]) -> pathlib.Path:
    path = folder / f"{name}-{version}-py3-none-any.whl"
    meta = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
    meta += "".join(f"Requires-Dist: {r}\n" for r in requires)
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{name}-{version}.dist-info/METADATA", meta)
    return path


def test_wheel_check_finds_what_neither_the_wheels_nor_the_image_provide(tmp_path):
    a = _wheel(
        tmp_path,
        "alpha",
        "1.0",
        [
            "beta_pkg>=2",  # another wheel (name normalized: beta-pkg)
            "PyYAML",  # in the image
            "gamma; python_version < '3.8'",  # not for CPython 3.12
            "delta; extra == 'docs'",  # an extra
            "epsilon; sys_platform == 'linux'",  # needed, provided by nobody
        ],
    )
    b = _wheel(tmp_path, "beta_pkg", "2.0", ["zeta"])
    missing = device.missing_requirements([a, b], {"pyyaml"})
    assert missing == [f'{a.name}: epsilon; sys_platform == "linux"', f"{b.name}: zeta"]
    assert device.missing_requirements([a, b], {"pyyaml", "epsilon", "Zeta"}) == []
    c = _wheel(tmp_path, "Beta.Pkg", "3.0", [])
    with pytest.raises(ValueError, match="two wheels of beta-pkg"):
        device.missing_requirements([a, b, c], set())


@pytest.mark.skipif(not list((REPO / ".whl").glob("*.whl")), reason="no wheels in .whl/ (launch/device_prepare.sh)")
def test_carried_wheels_are_complete_for_the_gpu_image():
    wheels = sorted((REPO / ".whl").glob("*.whl"))
    image = (REPO / "launch" / "gpu_image_packages.txt").read_text().splitlines()
    installed = {x.strip() for x in image if x.strip() and not x.startswith("#")}
    assert device.missing_requirements(wheels, installed) == []
    wanted = [x.split("==")[0] for x in (REPO / "launch" / "device_wheels.txt").read_text().split() if "==" in x]
    names = {device._canonical(w.name.split("-")[0]) for w in wheels}
    assert {device._canonical(n) for n in wanted} <= names


# ---------------------------------------------------------------- time boxes and the report


def test_boxes_keep_every_later_sections_minimum():
    boxes = device.boxes_for(["facts", "pools", "train"], {"facts": 500.0}, 1.0)
    # 300 s left: facts may take 300 − (20 + 60) = 220 s, not its 500 s cap.
    assert device.box_seconds(boxes, 0, 0.0, 300.0) == 220.0
    assert device.box_seconds(boxes, 2, 0.0, 300.0) == device.BOXES["train"].cap


def test_table_rows_come_from_the_report():
    report = {
        "facts": {"ceiling": {"tflops": 800.0, "kind": "H"}},
        "sample_pi0": {
            "batch_1": {
                "batch": 1,
                "ms_per_chunk": 10.0,
                "tflops": 400.0,
                "temp_gib": 1.0,
                "k_loop": True,
                "kv_reused": True,
                "compile_s": 9.0,
                "ms_prefix": 5.0,
                "ms_per_step": 0.5,
                "step_compile_s": 2.0,
            },
            "batch_64": {"status": "skipped: 3 s left"},
            "status": "ok",
        },
        "maniskill": {"status": "skipped: no mani_skill"},
    }
    rows = device.table_rows(report)
    assert rows[0][:7] == ["H", "π0 sampling", "1", "10.00", "100", "50.0%", "1.00 (scratch)"]
    assert "prefix 5.00 + K·0.50 ms; K loop yes, KV reused yes" in rows[0][8]
    assert [(r[1], r[8]) for r in rows[1:]] == [
        ("sample_pi0 batch_64", "skipped: 3 s left"),
        ("maniskill", "skipped: no mani_skill"),
    ]


def _run_device(args, tmp_path, timeout):
    env = dict(os.environ, OUT=str(tmp_path / "out"))
    return subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def test_a_section_past_its_box_is_stopped_and_the_rest_is_kept(tmp_path):
    cmd = [sys.executable, "-m", "pirl.bench.device", "--dry_run", "--sections=facts,train", "--box=train=3"]
    res = _run_device(cmd, tmp_path, 600)
    assert res.returncode == 0, res.stderr[-2000:]
    report = json.loads((tmp_path / "out" / device.REPORT).read_text())
    assert report["facts"]["status"] == "ok" and report["facts"]["ceiling"]["tflops"] > 0
    assert report["train"]["status"].startswith("timeout")
    assert report["train"]["wall_s"] < 3 + 40  # stopped at its box (plus the stop's grace)
    assert res.stdout.rstrip().splitlines()[-1].startswith("| ")  # the table comes last


@pytest.mark.slow
def test_dry_run_of_the_whole_command(tmp_path):
    """launch/device_check.sh --dry_run: every section measures something at tiny sizes on CPU,
    the report holds it, and the table is the last thing printed."""
    res = _run_device(["bash", "launch/device_check.sh", "--dry_run"], tmp_path, 1800)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    report = json.loads((tmp_path / "out" / device.REPORT).read_text())
    for name in device.BOXES:
        assert report[name]["status"] == "ok", (name, report[name])
    for name in ("sample_pi0", "sample_pi05"):
        for batch in (1, 4):
            r = report[name][f"batch_{batch}"]
            assert r["ms_per_chunk"] > 0 and r["ms_per_step"] > 0 and r["gflop"] > 0
            assert r["k_loop"] and r["kv_reused"], r["loops"]
    for name in ("update_8", "update_16", "update_32"):
        run, comp = report[name]["run"], report[name]["compiled"]
        assert run["samples_per_s"] > 0 and comp["plan_total_gib"] > 0 and comp["model_gflop"] > 0
    assert report["maniskill"]["1x1"]["steps_per_s"] > 0
    assert report["pools"]["metaworld_P1"]["steps_per_s"] > 0 and report["pools"]["metaworld_P2"]["steps_per_s"] > 0
    assert set(report["train"]) >= {"iteration_1", "iteration_2"}
    assert report["train"]["iteration_2"]["env/steps_per_s"] > 0
    lines = res.stdout.rstrip().splitlines()
    table = (tmp_path / "out" / device.TABLE).read_text().rstrip().splitlines()
    assert lines[-len(table) :] == table
    assert (tmp_path / "out" / "device_log.txt").exists()
