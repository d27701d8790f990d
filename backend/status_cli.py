"""``python -m backend status``: ask a running backend what it is doing.

    python -m backend status [--server tcp://HOST:5555] [--server-key SERVER.key
                             --client-key CLIENT.key_secret] [JOB_ID]

Prints the server's active and recent jobs (or one job), and for a Ray pool (``serve --executor
ray``) each node's GPU use, its memory classes and jobs, and the queue per memory class.
"""
from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from shared.defaults import DEFAULT_ADDRESS

DEFAULT_SERVER = DEFAULT_ADDRESS


def format_status(fields: dict[str, Any]) -> str:
    """A ``status`` reply's fields as text: one line per job, then the pool's nodes and queue."""
    lines = []
    jobs = fields.get("jobs") or []
    lines.append(f"jobs: {len(jobs)}" + ("" if jobs else " (none)"))
    for j in jobs:
        where = f" position {j['queue_position']}" if j.get("state") == "queued" else ""
        err = f"  {j['error'].get('code')}: {j['error'].get('message')}" if j.get("error") else ""
        lines.append(f"  {j['job_id']}  {j.get('kind', '')}  {j['state']}{where}  "
                     f"step {j.get('step', 0)}/{j.get('total', 0)}{err}")
    pool = fields.get("pool")
    if pool:
        nodes = pool.get("nodes") or []
        gpus = sum(n["gpus"] for n in nodes if n["alive"])
        busy = sum(n["gpus_busy"] for n in nodes if n["alive"])
        lines.append(f"pool: {pool.get('executor')} at {pool.get('address')}, {busy}/{gpus} GPUs "
                     f"busy on {sum(n['alive'] for n in nodes)} live node(s)")
        for n in nodes:
            classes = ",".join(n["classes"]) or "-"
            state = "" if n["alive"] else "  DEAD"
            jobs_here = " ".join(n["jobs"]) or "-"
            lines.append(f"  node {n['node_id'][:12]}  {n['address']}  GPUs {n['gpus_busy']}/"
                         f"{n['gpus']} busy  classes {classes}  jobs {jobs_here}{state}")
        queue = pool.get("queue") or {}
        lines.append("  queue: " + (", ".join(f"{c} {k}" for c, k in sorted(queue.items()))
                                    or "empty"))
    return "\n".join(lines)


def main(argv: list[str], prog: str = "python -m backend") -> int:
    p = argparse.ArgumentParser(prog=f"{prog} status", description="Show a running backend's "
                                "jobs and, for a Ray pool, its nodes' GPU use and queue per class.")
    p.add_argument("job_id", nargs="?", help="one job (default: the active and recent jobs)")
    p.add_argument("--server", default=DEFAULT_SERVER, help=f"backend address (default "
                   f"{DEFAULT_SERVER})")
    p.add_argument("--server-key", metavar="FILE", help="the server's CurveZMQ public key (.key)")
    p.add_argument("--client-key", metavar="FILE",
                   help="this client's CurveZMQ certificate with its secret key (.key_secret)")
    p.add_argument("--timeout", type=float, default=10.0, metavar="SECONDS")
    args = p.parse_args(argv)
    from shared.client import BackendClient
    from shared.protocol import Message
    kw: dict[str, Any] = {}
    if args.server_key or args.client_key:
        kw = {"server_public_key": args.server_key, "public_key": args.client_key,
              "secret_key": args.client_key}
    reply: Message | None = None
    with BackendClient(args.server, timeout_s=args.timeout, **kw) as c:
        c.status(args.job_id)
        deadline = time.monotonic() + args.timeout
        while reply is None and time.monotonic() < deadline:
            # a local timeout (no server) comes back as an error message too
            reply = next((m for m in c.poll() if m.type in ("status", "error")), None)
            time.sleep(0.02)
    if reply is None:
        print(f"splatbridge: no answer from {args.server} within {args.timeout:g} s",
              file=sys.stderr)
        return 1
    if reply.type == "error":
        print(f"error ({reply.fields['code']}): {reply.fields['message']}", file=sys.stderr)
        return 1
    print(format_status(reply.fields))
    return 0
