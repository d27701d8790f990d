"""SplatBridge backend command line.

    python -m backend serve [--bind tcp://127.0.0.1:5555] [--store DIR] [--device auto|cpu|cuda]
                            [--curve-secret SERVER.key_secret --curve-allow CLIENT_KEYS_DIR]
                            [--data-root DIR ...] [--admin KEY ...] [--max-queued-per-client N]
                            [--max-queued N] [--max-inputs-mb MIB] [--max-job-memory-gb GIB]
                            [--max-uploads-gb GIB]
                            [--job-module package.module ...] [--job-kind NAME=package.module:function ...]
    python -m backend <kind> ... --out FILE    run one job here: train, generate, edit, and every
                                               other registered kind (backend.job_cli; -h lists the
                                               kind's settings from its spec)
    python -m backend reconstruct PHOTOS_DIR_OR_VIDEO --out scene.ply --cameras-out cameras.json
                                     (backend.reconstruct.cli: a second output, so its own parser)
    python -m backend prefetch ...   (backend.models.prefetch_cli)
    python -m backend keys DIR [--name NAME]   write a CurveZMQ key pair
    python -m backend status [--server ADDR] [JOB_ID]   a running backend's jobs (and a Ray pool's
                                     nodes, GPU use and queue per class; backend.status_cli)

Installed as a package (`pip install ./`, see docs/DEPLOYING.md) the same commands are
`splatbridge-backend serve ...` and so on.

Extra job kinds (a spec module that registers a JobSpec whose runner is a job function): list their
modules in the environment variable SPLATBRIDGE_JOB_MODULES (comma-separated) for every command, or
pass ``serve --job-module MODULE``. Each subcommand imports its module only when it runs, so a missing
dependency of one (e.g. diffusers) does not break the others.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import math
import os
import sys
from collections.abc import Callable

from shared.defaults import DEFAULT_KEEP_DAYS, DEFAULT_MAX_STORE_GB

JOB_MODULES_ENV = "SPLATBRIDGE_JOB_MODULES"


def load_job_modules(names: list[str]) -> list[str]:
    """Import the built-in job kinds' specs and the modules ``names`` plus those listed in
    $SPLATBRIDGE_JOB_MODULES (each registers its kinds); returns the registered kinds. ValueError
    naming a module that cannot be imported."""
    from shared.jobkinds import load_builtin
    env = [n.strip() for n in os.environ.get(JOB_MODULES_ENV, "").split(",") if n.strip()]
    for name in [*env, *names]:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise ValueError(f"job module {name}: cannot import it ({exc})") from None
    return [spec.kind for spec in load_builtin()]


def _prog() -> str:
    """How the user ran us: the installed command's name, else ``python -m backend``."""
    name = os.path.basename(sys.argv[0] or "")
    return "splatbridge-backend" if name.removesuffix(".exe") == "splatbridge-backend" else "python -m backend"


def usage() -> str:
    return f"usage: {_prog()} {{serve,<job kind>,{','.join(c for c in COMMANDS if c != 'serve')}}} [options]  " \
           f"(-h for help)"


def _setup_logging() -> None:
    logging.basicConfig(stream=sys.stderr, level=os.environ.get("SPLATBRIDGE_LOG", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def serve_main(argv: list[str]) -> int:
    from backend.server import DEFAULT_BIND
    p = argparse.ArgumentParser(prog=f"{_prog()} serve",
                                description="Run the SplatBridge backend server.")
    p.add_argument("--bind", default=DEFAULT_BIND,
                   help=f"ZeroMQ address to bind (default {DEFAULT_BIND}); a non-loopback "
                        "address needs --curve-secret and --curve-allow")
    p.add_argument("--store", default=os.environ.get("SPLATBRIDGE_STORE", "splatbridge-jobs"),
                   help="job store folder (inputs and results of every job)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--curve-secret", metavar="FILE",
                   help="server CurveZMQ certificate with its secret key (*.key_secret)")
    p.add_argument("--curve-allow", metavar="DIR",
                   help="folder of allowed client public-key certificates (*.key)")
    p.add_argument("--job-module", action="append", default=[], metavar="MODULE",
                   help="import a module that registers extra job kinds (its JobSpecs, see "
                        "docs/ADDING_A_JOB_KIND.md)")
    p.add_argument("--job-kind", action="append", default=[], metavar="NAME=MODULE:FUNCTION",
                   help="register a plug-in job function with no declared settings (params pass "
                        "unchecked)")
    p.add_argument("--preview-interval", type=float, default=1.0, metavar="SECONDS",
                   help="send at most one preview per this many seconds per job")
    p.add_argument("--keep-days", type=float, default=DEFAULT_KEEP_DAYS, metavar="DAYS",
                   help="free the inputs and result of jobs finished more than DAYS ago (0: never; "
                        f"default {DEFAULT_KEEP_DAYS:g})")
    p.add_argument("--max-store-gb", type=float, default=DEFAULT_MAX_STORE_GB, metavar="GIB",
                   help="while the job store is larger, free the oldest finished jobs first (0: no "
                        f"limit; default {DEFAULT_MAX_STORE_GB:g}). The newest finished job is always kept")
    p.add_argument("--min-free-mb", type=float, default=256.0, metavar="MIB",
                   help="disk space the job store leaves free: submits and results that would "
                        "leave less are refused with 'disk_full' (default 256)")
    p.add_argument("--data-root", action="append", default=[], metavar="DIR",
                   help="a folder whose files clients may name in server-path settings "
                        "(dataset_path, images_dir, reconstruct's source/model, local model "
                        "folders); repeatable. Without it, CurveZMQ clients may name no server "
                        "path and local clients any path outside the job store")
    p.add_argument("--admin", action="append", default=[], metavar="KEY",
                   help="a client public-key certificate (*.key) or a folder of them whose "
                        "clients see, fetch and cancel every client's jobs; repeatable")
    p.add_argument("--max-queued-per-client", type=int, default=16, metavar="N",
                   help="jobs one client may have waiting; more are refused with 'queue_full' "
                        "(0: no limit; default 16)")
    p.add_argument("--max-queued", type=int, default=64, metavar="N",
                   help="jobs all clients may have waiting (0: no limit; default 64)")
    p.add_argument("--max-inputs-mb", type=float, default=2048.0, metavar="MIB",
                   help="payload bytes the waiting and running jobs may hold together (0: no "
                        "limit; default 2048)")
    p.add_argument("--max-uploads-gb", type=float, default=32.0, metavar="GIB",
                   help="bytes of uploaded photos and videos one client may hold on the backend (0: "
                        "no limit; default 32); uploads untouched for --keep-days are removed")
    p.add_argument("--max-job-memory-gb", type=float, default=0.0, metavar="GIB",
                   help="memory a job may need by its estimate, else 'too_large' (default 0: the "
                        "device's free memory when the server starts; with --executor ray: no check)")
    p.add_argument("--executor", default="local", choices=("local", "ray"),
                   help="where jobs run: 'local' (this process, one job at a time; the default) or "
                        "'ray' (a Ray cluster, one job per GPU; needs the [ray] extra)")
    p.add_argument("--ray-address", default=None, metavar="ADDR",
                   help="with --executor ray: the cluster to join (host:port of 'ray start --head', "
                        "or 'auto'); none: a one-node cluster in this process")
    p.add_argument("--memory-class", action="append", default=[], metavar="KIND=GB",
                   help="with --executor ray: jobs of KIND ask for a GPU with GB of memory (the "
                        "custom resource gpu_mem_<GB>gb, e.g. generate=40)")
    p.add_argument("--ray-cpus-per-job", type=float, default=1.0, metavar="N",
                   help="with --executor ray: CPUs each job holds besides its GPU (default 1)")
    args = p.parse_args(argv)
    _setup_logging()
    log = logging.getLogger("splatbridge.server")

    from backend.capabilities import DeviceError
    from backend.jobs import JOB_KINDS
    from backend.security import SecurityError, load_server_keys
    from backend.server import Server

    try:
        if bool(args.curve_secret) != bool(args.curve_allow):
            raise SecurityError("CurveZMQ needs both --curve-secret and --curve-allow")
        keys = load_server_keys(args.curve_secret, args.curve_allow) if args.curve_secret \
            else None
        load_job_modules(args.job_module)
        for spec in args.job_kind:
            name, sep, target = spec.partition("=")
            if not sep or not name:
                raise ValueError(f"--job-kind {spec!r} must look like NAME=package.module:function")
            JOB_KINDS.register(name, target)
        from backend.store import Retention
        for flag, value in (("--keep-days", args.keep_days), ("--max-store-gb", args.max_store_gb),
                            ("--min-free-mb", args.min_free_mb),
                            ("--max-queued-per-client", args.max_queued_per_client),
                            ("--max-queued", args.max_queued), ("--max-inputs-mb", args.max_inputs_mb),
                            ("--max-job-memory-gb", args.max_job_memory_gb),
                            ("--max-uploads-gb", args.max_uploads_gb)):
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{flag} must be a number >= 0 (0: no limit), got {value:g}")
        retention = Retention(args.keep_days, int(args.max_store_gb * 2 ** 30))
        executor = None
        if args.executor == "ray":
            executor = _ray_executor(args)
        elif args.ray_address or args.memory_class:
            raise ValueError("--ray-address and --memory-class need --executor ray")
        from backend.access import read_admin_keys
        from backend.admission import Caps
        caps = Caps(args.max_queued_per_client, args.max_queued, int(args.max_inputs_mb * 2 ** 20),
                    int(args.max_job_memory_gb * 2 ** 30), int(args.max_uploads_gb * 2 ** 30))
        server = Server(args.bind, args.store, args.device, keys,
                        preview_interval_s=args.preview_interval, retention=retention,
                        min_free_bytes=int(args.min_free_mb * 2 ** 20), executor=executor,
                        data_roots=tuple(args.data_root), admins=read_admin_keys(args.admin), caps=caps)
    except (SecurityError, DeviceError, OSError, ValueError) as exc:
        log.error("%s", exc)
        print(f"splatbridge: cannot start the server: {exc}", file=sys.stderr)
        return 2
    server.install_signal_handlers()
    server.serve_forever()
    return 0


def _ray_executor(args: argparse.Namespace):
    """The Ray pool of ``serve --executor ray`` (ValueError when Ray is missing or unreachable)."""
    try:
        from backend.ray_pool import RayExecutor, parse_memory_classes
    except ImportError as exc:
        raise ValueError(f"--executor ray needs Ray ({exc}); install the backend with its [ray] "
                         "extra, or pin ray from requirements.txt") from None
    classes = parse_memory_classes(args.memory_class)
    if not (math.isfinite(args.ray_cpus_per_job) and args.ray_cpus_per_job >= 0):
        raise ValueError(f"--ray-cpus-per-job must be a number >= 0, got {args.ray_cpus_per_job:g}")
    try:
        return RayExecutor(args.ray_address, classes, num_cpus=args.ray_cpus_per_job)
    except (ConnectionError, RuntimeError) as exc:
        raise ValueError(f"cannot reach the Ray cluster at {args.ray_address}: {exc}") from None


def keys_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog=f"{_prog()} keys",
                                description="Write a CurveZMQ key pair (NAME.key public, "
                                            "NAME.key_secret secret) into DIR.")
    p.add_argument("dir")
    p.add_argument("--name", default="server")
    args = p.parse_args(argv)
    from backend.security import make_keys
    public, secret = make_keys(args.dir, args.name)
    print(f"public key:  {public}\nsecret key:  {secret}  (keep it private)")
    return 0


def _lazy(module: str, func: str) -> Callable[[list[str]], int]:
    def run(argv: list[str]) -> int:
        try:
            mod = importlib.import_module(module)
        except ImportError as exc:
            print(f"splatbridge: {module} cannot be imported: {exc}", file=sys.stderr)
            return 2
        _setup_logging()
        rc = getattr(mod, func)(argv)
        return int(rc or 0)
    return run


COMMANDS: dict[str, Callable[[list[str]], int]] = {
    "serve": serve_main,
    "reconstruct": _lazy("backend.reconstruct", "cli"),
    "prefetch": _lazy("backend.models", "prefetch_cli"),
    "keys": keys_main,
    "status": lambda argv: _status_main(argv),
}


def _status_main(argv: list[str]) -> int:
    from backend import status_cli
    return status_cli.main(argv, _prog())


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip() if argv else usage(), file=sys.stderr if not argv else sys.stdout)
        return 0 if argv else 2
    cmd, rest = argv[0], argv[1:]
    if cmd in COMMANDS:
        return COMMANDS[cmd](rest)
    try:
        kinds = load_job_modules([])
    except ValueError as exc:
        print(f"splatbridge: {exc}", file=sys.stderr)
        return 2
    if cmd not in kinds:
        print(f"splatbridge: unknown command {cmd!r} (job kinds: {', '.join(kinds)})\n{usage()}",
              file=sys.stderr)
        return 2
    return _job_cli(cmd, rest)


def _job_cli(kind: str, argv: list[str]) -> int:
    try:
        from backend import job_cli
    except ImportError as exc:
        print(f"splatbridge: backend.job_cli cannot be imported: {exc}", file=sys.stderr)
        return 2
    _setup_logging()
    return job_cli.main(kind, argv, _prog())


if __name__ == "__main__":
    sys.exit(main())
