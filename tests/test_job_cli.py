"""``python -m backend <kind> --help`` is generated from the kind's spec: every setting as ``--name`` with
its range, default, unit and [advanced] marker; a range changed in the spec changes the command line
and the validation alike."""
from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from backend.job_cli import KindCli, build_parser, kind_cli_of, setting_help
from shared.jobkinds import load_builtin
from shared.jobspec import JobError, JobSpec, get_spec

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
load_builtin()


def _help(kind: str) -> str:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(TESTS)]), COLUMNS="1000",
               SPLATBRIDGE_JOB_MODULES="jobkinds_echo.spec")
    proc = subprocess.run([sys.executable, "-m", "backend", kind, "--help"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.mark.parametrize("kind, positionals", [
    ("train", ["data"]), ("generate", ["prompt"]), ("edit", ["input", "prompt"]), ("echo", ["message"])])
def test_help_lists_every_setting_with_range_default_and_unit(kind, positionals):
    text = _help(kind)
    if kind == "echo":
        import jobkinds_echo.spec  # noqa: F401  (this process needs the spec too)
    spec = get_spec(kind)
    filled = {p.setting for p in kind_cli_of(spec).positionals}
    lines: dict[str, str] = {}
    rows = text.splitlines()
    for i, line in enumerate(rows):
        m = re.match(r"^  (--[\w-]+)(.*)$", line)
        if m:       # "  --flag METAVAR  help", or the help on the next line when the flag is long
            parts = re.split(r"\s{2,}", m.group(2).strip(), maxsplit=1)
            lines[m.group(1)] = parts[1] if len(parts) == 2 else rows[i + 1].strip()
    for s in spec.settings:
        flag = "--" + s.name.replace("_", "-")
        if s.name in filled:
            assert flag not in lines, flag                          # given as a positional instead
            continue
        assert flag in lines, (flag, text)
        shown = lines[flag]
        assert shown == setting_help(s).replace("%%", "%"), (shown, setting_help(s))
        assert f"range {s.range_text()}" in shown and "; default " in shown
        assert (f"; unit {s.unit};" in shown) == bool(s.unit)
        assert shown.endswith("[advanced]") == s.advanced
    usage = text.split("\n\n")[0]
    assert usage.rstrip().endswith(" ".join(positionals)), usage
    assert "--out OUT" in usage


def test_a_range_changed_in_the_spec_changes_cli_and_validation(monkeypatch):
    monkeypatch.setenv("COLUMNS", "1000")      # argparse wraps help at the terminal width
    spec = get_spec("train")
    steps = spec.setting("steps")
    narrowed = dataclasses.replace(spec, kind="train_narrow", settings=tuple(
        dataclasses.replace(s, max=50, default=20) if s is steps else s for s in spec.settings))
    assert isinstance(narrowed, JobSpec)
    help_text = build_parser(narrowed, KindCli()).format_help()
    steps_line = next(line for line in help_text.splitlines() if line.strip().startswith("--steps "))
    assert "range [1, 50] or null; unit steps; default 20" in steps_line, steps_line     # steps is optional (per device)
    with pytest.raises(JobError, match=r"train_narrow setting steps=51: out of range: allowed \[1, 50\]"):
        narrowed.validate_params({"steps": 51})
    assert spec.validate_params({"steps": 51}).steps == 51
