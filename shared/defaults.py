"""Defaults both sides use, written once: where the backend listens and how long the job store keeps
finished jobs. The add-on's preferences, the CLI's options and the backend's own defaults read them."""
from __future__ import annotations

DEFAULT_PORT = 5555
DEFAULT_ADDRESS = f"tcp://127.0.0.1:{DEFAULT_PORT}"    # loopback: no CurveZMQ keys needed
DEFAULT_KEEP_DAYS = 30.0        # finished jobs' inputs and results are freed after this many days
DEFAULT_MAX_STORE_GB = 20.0     # while the job store is larger (GiB), the oldest finished jobs are freed
