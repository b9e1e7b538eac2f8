"""What pirl costs on an accelerator, measured in one prepared run within a fixed time budget.

    bash launch/device_check.sh                    # on a GPU host: loaders, wheels, then this module
    python -m pirl.bench.device --out=DIR          # the measurement alone
    python -m pirl.bench.device --dry_run          # the same on CPU at tiny sizes (tests/test_bench_device.py)
    python -m pirl.bench.device --sections=train --box=train=200   # one section, its own time box

Sections, in priority order (``device_sections``): facts (device, driver, jax; the bfloat16
matrix-product ceiling and the memory bandwidth), sample_pi0 / sample_pi05 (full-size sampling per
chunk at batch 1 and 64, prefix / expert-step split, FLOPs, the HLO loop check), update_8 / 16 /
32 (the PPO update at those micro-batch sizes against ``pirl.plan``'s memory prediction),
maniskill (GPU-batched PickCube), pools (MetaWorld, LIBERO through EGL at P = 1..16), train (a
short end-to-end ``pirl.train``).

Each section runs in a process of its own (fresh JAX: its peak memory is its own, and a crash or a
hang loses only that section), inside a time box: its own cap, cut so that every later section
keeps its minimum, and never past the budget (``--budget_s``, counted from ``$PIRL_DEVICE_T0``
when the launcher set it, so the wheel install counts too). A section past its box is stopped;
what it measured so far stays. Results go to ``DIR/device_report.json`` as they are measured; the
markdown table is written to ``DIR/device_report.md`` and printed last. Compile times are reported
apart from run times; run times are medians of repeated calls after a warm-up.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import pathlib
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import zipfile

from pirl.bench import device_sections

REPORT = "device_report.json"
TABLE = "device_report.md"


@dataclasses.dataclass(frozen=True)
class Box:
    """A section's time: at most ``cap`` seconds; not started with under ``minimum`` left."""

    cap: float
    minimum: float


# Caps from an estimate of each section on one H200 (compiles of 10-40 s dominate); the dry run
# multiplies them by DRY_RUN_SLACK (2 CPU cores shared with other work).
BOXES: dict[str, Box] = {
    "facts": Box(30, 15),
    "sample_pi0": Box(110, 40),
    "sample_pi05": Box(100, 40),
    "update_8": Box(90, 40),
    "update_16": Box(70, 40),
    "update_32": Box(70, 40),
    "maniskill": Box(45, 5),
    "pools": Box(60, 20),
    "train": Box(150, 60),
}
DRY_RUN_SLACK = 4.0


# ---------------------------------------------------------------- the report


def load(path: pathlib.Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def record(path: pathlib.Path, section: str, key: str, value) -> None:
    """Stores report[section][key] = value at once (atomic replace: a kill never leaves half a file)."""
    report = load(path)
    report.setdefault(section, {})[key] = value
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(report, indent=1, default=str))
    os.replace(tmp, path)


# ---------------------------------------------------------------- running the sections


def boxes_for(names: list[str], overrides: dict[str, float], slack: float) -> list[tuple[str, Box]]:
    """[(name, box)] of the sections to run, in order: ``overrides`` replace caps; every figure is
    scaled by ``slack`` (the dry run's)."""
    out = []
    for n in names:
        b = BOXES[n]
        cap = overrides.get(n, b.cap * slack)
        out.append((n, Box(cap, min(b.minimum * slack, cap))))
    return out


def box_seconds(boxes: list[tuple[str, Box]], i: int, now: float, budget_end: float) -> float:
    """Seconds section i may take: its cap, less what every later section needs at least, never
    past the budget's end."""
    reserve = sum(b.minimum for _, b in boxes[i + 1 :])
    return min(boxes[i][1].cap, budget_end - now - reserve)


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM to the section's process group (it cleans up its own children), SIGKILL after 5 s."""
    for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 30)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def run_all(args) -> int:
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / REPORT
    if path.exists():
        path.unlink()
    t0 = float(os.environ.get("PIRL_DEVICE_T0") or time.time())
    budget_end = t0 + args.budget_s
    names = [n.strip() for n in args.sections.split(",") if n.strip()] if args.sections else list(BOXES)
    unknown = [n for n in names if n not in BOXES]
    if unknown:
        print(f"error: unknown sections {unknown}; sections: {list(BOXES)}", file=sys.stderr)
        return 2
    overrides = {}
    for item in args.box:
        name, _, seconds = item.partition("=")
        if name not in BOXES or not seconds:
            print(f"error: --box={item!r}: expected NAME=SECONDS with NAME in {list(BOXES)}", file=sys.stderr)
            return 2
        overrides[name] = float(seconds)
    boxes = boxes_for(names, overrides, DRY_RUN_SLACK if args.dry_run else 1.0)
    record(path, "run", "budget_s", args.budget_s)
    record(path, "run", "dry_run", args.dry_run)
    env = dict(os.environ)
    if args.dry_run:
        env["JAX_PLATFORMS"] = "cpu"
    # Programs compiled by more than one section (parameter init) compile once.
    cache = tempfile.mkdtemp(prefix="pirl_device_jax_cache_")
    env.setdefault("JAX_COMPILATION_CACHE_DIR", cache)
    for i, (name, box) in enumerate(boxes):
        now = time.time()
        seconds = box_seconds(boxes, i, now, budget_end)
        if seconds < box.minimum:
            record(path, name, "status", f"skipped: budget ({budget_end - now:.0f} s left, box {seconds:.0f} s)")
            print(f"== {name}: skipped, {budget_end - now:.0f} s of the budget left", flush=True)
            continue
        print(f"== {name}: box {seconds:.0f} s, {budget_end - now:.0f} s of the budget left", flush=True)
        cmd = [sys.executable, "-m", "pirl.bench.device", f"--section={name}", f"--out={out}"]
        cmd += [f"--deadline={now + seconds}"] + (["--dry_run"] if args.dry_run else [])
        proc = subprocess.Popen(cmd, env=env, start_new_session=True)
        try:
            code = proc.wait(seconds)
        except subprocess.TimeoutExpired:
            _stop(proc)
            record(path, name, "status", f"timeout: stopped after its {seconds:.0f} s box (what it measured is kept)")
        else:
            if code:
                status = load(path).get(name, {}).get("status", "")
                if not str(status).startswith("failed"):
                    record(path, name, "status", f"failed: exit code {code}")
        record(path, name, "wall_s", time.time() - now)
    record(path, "run", "wall_s", time.time() - t0)
    table = format_table(load(path))
    (out / TABLE).write_text(table + "\n")
    print(table, flush=True)
    return 0


def run_section(args) -> int:
    path = pathlib.Path(args.out) / REPORT

    def stop(signum, frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    ctx = device_sections.Context(
        dry_run=args.dry_run, deadline=args.deadline, record=lambda k, v: record(path, args.section, k, v)
    )
    t0 = time.time()
    try:
        device_sections.SECTIONS[args.section](ctx)
    except Exception as e:
        traceback.print_exc()
        ctx.record("status", f"failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300])
        return 1
    if "status" not in load(path).get(args.section, {}):
        ctx.record("status", "ok")
    print(f"== {args.section}: done in {time.time() - t0:.0f} s", flush=True)
    return 0


# ---------------------------------------------------------------- the table

COLUMNS = ("device", "what", "batch", "ms/chunk", "samples/s", "MFU", "memory GiB", "env steps/s", "notes")


def _f(x, fmt: str = ".3g") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    return format(x, fmt)


def _mark(ok: bool | None) -> str:
    return "?" if ok is None else "yes" if ok else "NO"


def table_rows(report: dict) -> list[list[str]]:
    """One row per measurement of the report (module doc); sections that did not finish show their
    status. MFU is achieved matrix TFLOP/s over the measured matrix-product ceiling."""
    facts = report.get("facts", {})
    ceiling = facts.get("ceiling", {}).get("tflops")
    device = facts.get("ceiling", {}).get("kind") or "?"
    rows = []

    def mfu(tflops):
        return f"{tflops / ceiling:.1%}" if ceiling and tflops is not None else "—"

    for name in ("sample_pi0", "sample_pi05"):
        sec = report.get(name, {})
        what = ("π0.5" if name.endswith("05") else "π0") + " sampling"
        for key, r in sec.items():
            if not key.startswith("batch_") or "batch" not in r:
                continue
            notes = (
                f"prefix {_f(r.get('ms_prefix'), '.2f')} + K·{_f(r.get('ms_per_step'), '.2f')} ms; "
                f"K loop {_mark(r['k_loop'])}, KV reused {_mark(r['kv_reused'])}; "
                f"compile {_f(r['compile_s'], '.0f')} + {_f(r.get('step_compile_s'), '.0f')} s"
            )
            rows.append(
                [
                    device,
                    what,
                    str(r["batch"]),
                    _f(r["ms_per_chunk"], ".2f"),
                    _f(r["batch"] / r["ms_per_chunk"] * 1e3, ".4g"),
                    mfu(r["tflops"]),
                    _f(r["temp_gib"], ".2f") + " (scratch)",
                    "—",
                    notes,
                ]
            )
    for name in ("update_8", "update_16", "update_32"):
        sec = report.get(name, {})
        cfg, comp, run = sec.get("config", {}), sec.get("compiled", {}), sec.get("run", {})
        if not run:
            continue
        plan_total = comp.get("plan_total_gib")
        peak = run.get("peak_gib")
        memory = f"{_f(peak, '.2f')} (plan {_f(plan_total, '.2f')}"
        if peak is not None and plan_total and not math.isnan(peak):
            memory += f", {peak / plan_total - 1:+.0%}"
        rows.append(
            [
                device,
                f"π0 PPO update, micro-batch {cfg.get('micro')}",
                str(cfg.get("samples")),
                "—",
                _f(run["samples_per_s"], ".4g"),
                mfu(run["model_tflops"]),
                memory + ")",
                "—",
                f"{_f(run['ms_per_update'], '.0f')} ms per update of 2 micro-batches; with remat recompute "
                f"{mfu(run['executed_tflops'])}; compile {_f(comp.get('compile_s'), '.0f')} s",
            ]
        )
    for r in report.get("maniskill", {}).values():
        if isinstance(r, dict) and "steps_per_s" in r:
            what = f"ManiSkill PickCube rgb, {r['backend']} backend"
            notes = f"{r['workers']} worker(s) × {r['envs']} envs, {r['image']}² images"
            rows.append([device, what, "—", "—", "—", "—", "—", _f(r["steps_per_s"], ".4g"), notes])
    sec = report.get("pools", {})
    for key, r in sec.items():
        if isinstance(r, dict) and "steps_per_s" in r:
            sim, p = key.rsplit("_P", 1)
            what = f"{sim} pool, EGL, P = {p}"
            notes = f"efficiency {_f(r['efficiency'], '.2f')}, {sec.get(f'{sim}_image')}² renders"
            rows.append([device, what, "—", "—", "—", "—", "—", _f(r["steps_per_s"], ".4g"), notes])
    for key, r in report.get("train", {}).items():
        if key.startswith("iteration_") and isinstance(r, dict):
            notes = (
                f"iteration {_f(r.get('time/iteration_s'), '.1f')} s: rollout {_f(r.get('time/rollout_s'), '.1f')} "
                f"(inference {_f(r.get('time/inference_s'), '.1f')}, envs {_f(r.get('time/env_wait_s'), '.1f')}), "
                f"update {_f(r.get('time/update_s'), '.1f')}"
            )
            what = f"pirl.train π0 MetaWorld, iteration {key.split('_')[1]}"
            rows.append([device, what, "—", "—", "—", "—", "—", _f(r.get("env/steps_per_s"), ".4g"), notes])
    for name, sec in report.items():
        status = sec.get("status") if isinstance(sec, dict) else None
        if status and status != "ok":
            rows.append([device, name, "—", "—", "—", "—", "—", "—", str(status)])
        if isinstance(sec, dict):
            for key, r in sec.items():
                if isinstance(r, dict) and str(r.get("status", "ok")).startswith("skipped"):
                    rows.append([device, f"{name} {key}", "—", "—", "—", "—", "—", "—", r["status"]])
    return rows


def format_table(report: dict) -> str:
    facts = report.get("facts", {})
    info, ceiling, bw = facts.get("facts", {}), facts.get("ceiling", {}), facts.get("bandwidth", {})
    smi, run = info.get("nvidia_smi", {}), report.get("run", {})
    head = (
        f"# {info.get('date', '?')}: {smi.get('name', info.get('devices', ['?'])[0] if info.get('devices') else '?')}, "
        f"driver {smi.get('driver_version', '—')}, jax {info.get('jax', '?')} ({info.get('backend', '?')}); "
        f"bf16 matmul {_f(ceiling.get('tflops'), '.0f')} TFLOP/s (n={ceiling.get('n', '?')}), "
        f"elementwise {_f(bw.get('tb_s'), '.2f')} TB/s; "
        f"run {_f(run.get('wall_s'), '.0f')} s of a {_f(run.get('budget_s'), '.0f')} s budget"
        + (" (dry run: tiny sizes on CPU)" if run.get("dry_run") else "")
    )
    lines = [head, "", "| " + " | ".join(COLUMNS) + " |", "|" + "|".join("---" for _ in COLUMNS) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in table_rows(report)]
    return "\n".join(lines)


# ---------------------------------------------------------------- carried wheels


def _canonical(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


# Markers of the GPU host's interpreter (Linux x86-64, CPython 3.12).
TARGET_MARKERS = {
    "python_version": "3.12",
    "python_full_version": "3.12.3",
    "platform_system": "Linux",
    "sys_platform": "linux",
    "platform_machine": "x86_64",
    "os_name": "posix",
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
    "extra": "",
}


def missing_requirements(wheels: list[pathlib.Path], installed: set[str]) -> list[str]:
    """Requirements of the wheels (their METADATA's Requires-Dist for the GPU host's markers,
    extras left out) that neither another wheel nor ``installed`` provides, as 'wheel: requirement'.
    Raises ValueError when two wheels are versions of one package (pip would refuse the set)."""
    from packaging.requirements import Requirement

    names: dict[str, str] = {}
    for w in wheels:
        name = _canonical(w.name.split("-")[0])
        if name in names:
            raise ValueError(f"two wheels of {name}: {names[name]} and {w.name}; keep one")
        names[name] = w.name
    provided = set(names) | {_canonical(n) for n in installed}
    missing = []
    for w in wheels:
        with zipfile.ZipFile(w) as z:
            meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
            text = z.read(meta).decode()
        for line in text.splitlines():
            if not line.startswith("Requires-Dist:"):
                continue
            req = Requirement(line.split(":", 1)[1].strip())
            if req.marker is not None and not req.marker.evaluate(TARGET_MARKERS):
                continue
            if _canonical(req.name) not in provided:
                missing.append(f"{w.name}: {req}")
    return missing


def check_wheels(folder: str, installed_list: str | None) -> int:
    wheels = sorted(pathlib.Path(folder).glob("*.whl"))
    if installed_list:
        lines = pathlib.Path(installed_list).read_text().splitlines()
        installed = {x.split("#")[0].strip() for x in lines} - {""}
        where = installed_list
    else:
        from importlib import metadata

        installed = {d.metadata["Name"] for d in metadata.distributions() if d.metadata["Name"]}
        where = "this interpreter"
    try:
        missing = missing_requirements(wheels, installed)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    size = sum(w.stat().st_size for w in wheels) / 2**20
    print(f"wheels: {len(wheels)} in {folder} ({size:.1f} MiB); requirements checked against {where}")
    for m in missing:
        print(f"missing: {m}")
    return 1 if missing else 0


# ---------------------------------------------------------------- command line


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=os.environ.get("OUT") or "device_out", help="report folder ($OUT if set)")
    p.add_argument("--dry_run", action="store_true", help="CPU, tiny sizes, same code: a test")
    p.add_argument("--budget_s", type=float, help="seconds for everything, from $PIRL_DEVICE_T0 (540; dry run 1800)")
    p.add_argument("--sections", default="", help=f"comma-separated subset of {','.join(BOXES)}")
    p.add_argument("--box", action="append", default=[], help="NAME=SECONDS: a section's cap")
    p.add_argument("--check_wheels", metavar="DIR", help="check the wheels' requirements and exit")
    p.add_argument("--installed_list", help="with --check_wheels: a file of installed package names")
    p.add_argument("--section", help=argparse.SUPPRESS)  # internal: run one section in this process
    p.add_argument("--deadline", type=float, default=math.inf, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.budget_s is None:
        args.budget_s = 1800.0 if args.dry_run else 540.0
    if args.check_wheels:
        return check_wheels(args.check_wheels, args.installed_list)
    if args.section:
        return run_section(args)
    return run_all(args)


if __name__ == "__main__":
    sys.exit(main())
