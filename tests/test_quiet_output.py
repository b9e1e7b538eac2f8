"""What the commands print: library INFO logs stay off the terminal unless --verbosity asks for
them, so a run's output is its progress bar, its own lines and warnings."""

import os
import pathlib
import re
import subprocess
import sys
import tokenize

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
# absl's INFO line prefix: I, MMDD, time, thread, file:line (e.g. "I1129 22:38:24.799062 1398 atomicity.py:140]").
INFO_LINE = re.compile(r"^I\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ [\w.]+:\d+\]", re.MULTILINE)
# A command that logs the way orbax and JAX do (Python logging through absl) under pirl's cli.run.
PROBE = """
import logging
from absl import logging as absl_logging
from pirl import cli

def main(argv):
    absl_logging.info("probe absl info")
    logging.getLogger("orbax").info("probe library info")
    absl_logging.warning("probe absl warning")

cli.run(main)
"""


def _env():
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
    env.pop("XLA_FLAGS", None)  # one CPU device, as a user's laptop
    return env


def _probe(*args: str) -> str:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, *args], cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stderr


def test_info_logs_are_hidden_unless_verbosity_asks():
    quiet = _probe()
    assert "probe absl info" not in quiet and "probe library info" not in quiet
    assert "probe absl warning" in quiet  # warnings stay
    for flag in ("--verbosity=0", "-v=0"):
        loud = _probe(flag)
        assert "probe absl info" in loud and "probe library info" in loud and "probe absl warning" in loud


@pytest.mark.slow
def test_shrunk_quickstart_prints_no_library_info(tmp_path):
    """The quickstart command at test sizes (SFT with its checkpoint, an eval, one PPO iteration and
    its checkpoint): no absl/orbax INFO line, and a screenful of output apart from the bar."""
    shrink = [
        "--config.sft.num_demos=1",
        "--config.sft.holdout_demos=0",
        "--config.sft.steps=2",
        "--config.sft.log_every=1",
        "--config.env.num_envs=2",
        "--config.env.max_steps=10",
        "--config.rl.minibatch_size=4",
        "--config.rl.micro_batch_size=4",
        "--config.rl.update_epochs=1",
        "--config.train.iterations=1",
        "--config.train.eval_every=1",
        "--config.train.save_every=1",
        "--config.train.tensorboard=False",
        "--config.eval.num_envs=2",
        "--config.eval.num_trials=1",
        "--config.eval.max_steps=10",
    ]
    cmd = [sys.executable, "-m", "pirl.train", "--config=configs/quickstart.py", f"--workdir={tmp_path}", *shrink]
    out = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=900)
    text = out.stdout + out.stderr
    assert out.returncode == 0, text[-3000:]
    assert (tmp_path / "sft" / "params").is_dir() and (tmp_path / "checkpoints" / "1").is_dir()
    assert not INFO_LINE.search(text), INFO_LINE.findall(text)[:5]
    assert "No private macro file" not in text, text[-3000:]
    # tqdm redraws its bar with carriage returns: a line is what ends in a newline.
    lines = [line.split("\r")[-1] for line in text.splitlines()]
    assert len(lines) <= 25, "\n".join(lines)
    assert "eval before training: success" in out.stdout and out.stdout.strip().splitlines()[-1].startswith("done: ")


def test_help_shows_the_usage_as_written_and_every_flag_of_the_command():
    out = subprocess.run(
        [sys.executable, "-m", "pirl.train", "--help"],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    # The multi-host example keeps its two lines (a backslash ends the first).
    assert "--coordinator_address=host0:1234 \\\n        --num_processes=4" in out.stdout, out.stdout
    flags_part = out.stdout.split("\nflags:\n", 1)[1]
    for flag in ("--config:", "--workdir:", "--coordinator_address:", "--num_processes:", "--process_id:"):
        assert flag in flags_part, flags_part


CONTINUATION = re.compile(r"(?<!\\)(?:\\\\)*\\\n")


def test_no_string_in_pirl_ends_a_line_with_a_stray_line_continuation():
    """A backslash at the end of a line in a plain (non-raw) string joins it to the next: usage
    examples in docstrings must keep theirs (raw strings)."""
    bad = []
    for path in sorted((ROOT / "pirl").rglob("*.py")):
        with tokenize.open(path) as f:
            for tok in tokenize.generate_tokens(f.readline):
                prefix = tok.string[: len(tok.string) - len(tok.string.lstrip("rRbBuUfF"))]
                # An odd run of backslashes before a newline: the last one escapes the newline.
                if tok.type == tokenize.STRING and "r" not in prefix.lower() and CONTINUATION.search(tok.string):
                    bad.append(f"{path.relative_to(ROOT)}:{tok.start[0]}")
    assert not bad, bad
