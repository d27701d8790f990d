"""The command line of every job kind, ``python -m backend <kind> [positionals] --out FILE [options]``,
generated from the kind's spec: each setting is an option ``--name`` (underscores as dashes) whose help
gives its range, default and unit, and ``[advanced]`` for what the add-on tucks away. The kind's backend
module may declare a ``CLI = KindCli(...)``: its positional arguments (each fills a setting or feeds
the payload builder), extra options and how the payload is built from them.

Also here: the device choice, a context that prints progress and stops on the first Ctrl+C (keeping what
the job has), and writing the result (splats by extension, plus ``<out>.json`` with metrics and meta).
"""
from __future__ import annotations

import argparse
import importlib
import json
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from backend.job_api import JobError, JobResult
from shared.jobspec import JobSpec, Setting, Settings, get_spec
from shared.splats import Splats

# job errors that mean "the command line was wrong" (exit status 2); other job errors exit with 1
USAGE_ERRORS = ("bad_params", "bad_input", "bad_dataset")


@dataclass(frozen=True)
class Positional:
    """A positional argument of a kind's command line; ``setting``: the setting it fills (empty: only
    the kind's ``payload`` builder reads it, e.g. an input file)."""

    name: str
    help: str
    setting: str = ""


@dataclass(frozen=True)
class KindCli:
    """What a kind's command line has besides its settings' options (declared once, in the kind's
    backend module as ``CLI``): positionals, extra options (``(flags, argparse keywords)``), and
    ``payload(args, settings) -> payload`` (may raise ``JobError``)."""

    positionals: tuple[Positional, ...] = ()
    options: tuple[tuple[tuple[str, ...], Mapping[str, Any]], ...] = ()
    payload: Callable[[argparse.Namespace, Settings], dict] | None = None


def _flag(s: Setting) -> str:
    return "--" + s.name.replace("_", "-")


def _shown(value: Any) -> str:
    if value is None:
        return "derived"
    if isinstance(value, tuple):
        return " ".join(f"{v:g}" for v in value)
    if isinstance(value, str):
        return repr(value)
    return f"{value:g}" if isinstance(value, float) else str(value)


def setting_help(s: Setting) -> str:
    """``description; range R; unit U; default D [advanced]``: one setting's line in ``--help``."""
    unit = f"; unit {s.unit}" if s.unit else ""
    text = f"{s.description}; range {s.range_text()}{unit}; default {_shown(s.default)}"
    return (text + " [advanced]" if s.advanced else text).replace("%", "%%")


def build_parser(spec: JobSpec, kind_cli: KindCli, command: str = "python -m backend") -> argparse.ArgumentParser:
    """The argparse parser of ``spec``'s command line (``command`` runs the backend's CLI); settings'
    options default to "not given" (``argparse.SUPPRESS``) so that the spec's defaults and checks apply."""
    p = argparse.ArgumentParser(prog=f"{command} {spec.kind}", description=spec.description,
                                epilog="Settings marked [advanced] are in the add-on's Advanced section.")
    filled = {a.setting for a in kind_cli.positionals if a.setting}
    for a in kind_cli.positionals:
        p.add_argument(a.name, help=a.help)
    p.add_argument("--out", required=True, help="output splat file (.ply, .compressed.ply, .splat, .spz, ...); "
                                                "metrics and settings go to <out>.json")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="where the job runs; default auto (CUDA when torch sees a GPU)")
    for flags, options in kind_cli.options:
        p.add_argument(*flags, **dict(options))
    group = p.add_argument_group("settings", f"the {spec.kind} job's settings, from its spec")
    for s in spec.settings:
        if s.name in filled:
            continue
        kw: dict[str, Any] = {"dest": s.name, "default": argparse.SUPPRESS, "help": setting_help(s)}
        if s.type == "bool":
            kw["action"] = argparse.BooleanOptionalAction
        elif s.type == "floats":
            kw.update(type=float, nargs=s.length, metavar=tuple("ABCDEFGH"[:s.length]))
        else:
            kw["type"] = {"int": int, "float": float, "str": str}[s.type]
            kw["metavar"] = "{" + ",".join(s.choices) + "}" if s.choices else s.type.upper()
        group.add_argument(_flag(s), **kw)
    return p


def kind_cli_of(spec: JobSpec) -> KindCli:
    """The ``CLI`` declared by the kind's backend module (``spec.runner``'s module), or none."""
    module = importlib.import_module(spec.runner.split(":", 1)[0])
    return getattr(module, "CLI", None) or KindCli()


def main(kind: str, argv: list[str], command: str = "python -m backend") -> int:
    """``python -m backend <kind> ...``: parse, check with the spec, run the job, write the result.
    Exit status 0, 2 (bad arguments, settings or input) or 1 (the job failed)."""
    spec = get_spec(kind)
    kind_cli = kind_cli_of(spec)
    args = build_parser(spec, kind_cli, command).parse_args(argv)
    params = {s.name: getattr(args, s.name) for s in spec.settings if hasattr(args, s.name)}
    for a in kind_cli.positionals:
        if a.setting:
            params[a.setting] = getattr(args, a.name)
    device = cli_device(args.device)
    if device is None:
        return 2
    module_name, func_name = spec.runner.split(":", 1)
    job = getattr(importlib.import_module(module_name), func_name)
    try:
        settings = spec.validate_params(params)
        payload = kind_cli.payload(args, settings) if kind_cli.payload is not None else {}
        spec.validate_payload(payload, settings)
        result = run_job_cli(job, settings, payload, device)
    except JobError as exc:
        report_job_error(exc)
        return 2 if exc.code in USAGE_ERRORS else 1
    write_cli_result(args.out, result)
    shown = {k: v for k, v in result.metrics.items() if isinstance(v, (int, float))}
    print("  ".join(f"{k} {v:.4g}" for k, v in shown.items()), file=sys.stderr)
    return 0


def cli_device(choice: str) -> str | None:
    """"auto" / "cpu" / "cuda" -> the torch device to use; None (after printing why) when "cuda" is
    asked for and torch sees no CUDA GPU."""
    if choice == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if choice == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but CUDA is not available", file=sys.stderr)
        return None
    return choice


class CliContext:
    """A ``JobContext`` for the command line: progress lines on stderr (at most one per 2 s, and every
    ``stage``, with its step/total when it counts); ``stop`` set by the first Ctrl+C."""

    def __init__(self, device: str, job_dir: Path):
        self.device = device
        self.job_dir = job_dir
        self.stop = False
        self._last = 0.0

    def report(self, step: int, total: int, metrics: dict, preview: Splats | None = None) -> None:
        now = time.monotonic()
        if "stage" in metrics:      # a stage may count its own steps ("extracting features 37/150")
            print(f"{metrics['stage']}" + (f" {step}/{total}" if total else " ..."), file=sys.stderr, flush=True)
        elif now - self._last >= 2.0 or step >= total:
            self._last = now
            psnr = f"psnr {metrics['psnr']:.2f} dB  " if "psnr" in metrics else ""
            print(f"step {step}/{total}  loss {metrics.get('loss', float('nan')):.4g}  {psnr}"
                  f"gaussians {int(metrics.get('num_gaussians', 0))}  {metrics.get('steps_per_s', 0):.2f} it/s  "
                  f"eta {metrics.get('eta_s', 0):.0f} s", file=sys.stderr, flush=True)

    def should_stop(self) -> bool:
        return self.stop


def run_job_cli(job: Callable[[Settings, dict, CliContext], JobResult], params: Settings, payload: dict,
                device: str) -> JobResult:
    """Run ``job(params, payload, ctx)`` with a ``CliContext``; the first Ctrl+C asks it to finish early
    (a second one aborts). ``JobError`` propagates."""
    with tempfile.TemporaryDirectory() as tmp:
        ctx = CliContext(device, Path(tmp))
        previous = signal.getsignal(signal.SIGINT)

        def _stop(signum, frame):   # first Ctrl+C: finish early and write what we have
            print("stopping after this step (Ctrl+C again to abort)", file=sys.stderr, flush=True)
            ctx.stop = True
            signal.signal(signal.SIGINT, previous)

        signal.signal(signal.SIGINT, _stop)
        try:
            return job(params, payload, ctx)
        finally:
            signal.signal(signal.SIGINT, previous)


def write_cli_result(out: str | Path, result: JobResult) -> Path:
    """Write the result's splats to ``out`` (format by extension) and ``<out>.json`` (metrics, meta;
    a top-level array of meta, e.g. segment's ``labels``, as ``<out>.<key>.npy``); returns the JSON's path."""
    from shared.formats import write_splats
    out = Path(out)
    write_splats(out, result.splats)
    for key, value in result.meta.items():
        if hasattr(value, "dtype") and hasattr(value, "shape"):
            path = out.with_suffix(out.suffix + f".{key}.npy")
            np.save(path, value, allow_pickle=False)
            print(f"wrote {path} ({value.dtype}{list(value.shape)})", file=sys.stderr)
    meta_path = out.with_suffix(out.suffix + ".json")
    meta_path.write_text(json.dumps({"metrics": result.metrics, "meta": result.meta}, indent=2, default=str))
    print(f"wrote {out} ({len(result.splats)} splats) and {meta_path}", file=sys.stderr)
    return meta_path


def report_job_error(exc: JobError) -> int:
    """Print ``error (code): message`` and return the CLI's exit status for a failed job (1)."""
    print(f"error ({exc.code}): {exc.message}", file=sys.stderr)
    return 1
