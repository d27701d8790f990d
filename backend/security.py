"""Bind-address policy and CurveZMQ set-up for the server.

Loopback (``tcp://127.0.0.1``, ``tcp://localhost``, ``tcp://[::1]``) and process-local transports
(``ipc://``, ``inproc://``) may be bound without keys. Anything else is reachable from other
machines, so it needs CurveZMQ: the server's secret key (a zmq certificate file as written by
``zmq.auth.create_certificates`` or ``python -m backend keys``) and a folder of allowed client
public-key certificates. Clients whose key is not in that folder are refused by the ZAP
authenticator before any message reaches the server.
"""
from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator


class SecurityError(Exception):
    """The server must not start with this address/key combination (message says why)."""


@dataclass
class CurveKeys:
    public: bytes          # z85, 40 bytes
    secret: bytes          # z85, 40 bytes
    allow_dir: Path        # folder of allowed client public-key certificates


def is_local_address(address: str) -> bool:
    """True when binding ``address`` exposes the socket only to this machine."""
    if address.startswith(("ipc://", "inproc://")):
        return True
    if not address.startswith("tcp://"):
        return False
    host = address[len("tcp://"):].rsplit(":", 1)[0]
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:            # "*", an interface name, a host name
        return False


def load_server_keys(secret_file: str | os.PathLike, allow_dir: str | os.PathLike) -> CurveKeys:
    """Read the server certificate (with its secret key) and check the allow-list folder."""
    secret_file, allow_dir = Path(secret_file), Path(allow_dir)
    if not secret_file.is_file():
        raise SecurityError(f"CurveZMQ server key file {secret_file} does not exist")
    try:
        public, secret = zmq.auth.load_certificate(secret_file)
    except Exception as exc:
        raise SecurityError(f"cannot read CurveZMQ key file {secret_file}: {exc}") from None
    if not secret:
        raise SecurityError(f"{secret_file} holds no secret key (pass the server's "
                            "'.key_secret' certificate, not its public one)")
    if not allow_dir.is_dir():
        raise SecurityError(f"client allow-list folder {allow_dir} does not exist")
    if not any(allow_dir.glob("*.key")):
        raise SecurityError(f"client allow-list folder {allow_dir} holds no public-key "
                            "certificates (*.key): no client could connect")
    return CurveKeys(public=public, secret=secret, allow_dir=allow_dir)


def check_bind(address: str, keys: CurveKeys | None) -> None:
    """Refuse a non-local bind without CurveZMQ keys."""
    if keys is None and not is_local_address(address):
        raise SecurityError(
            f"refusing to bind {address}: it is reachable from other machines and no CurveZMQ "
            "keys were given. Bind a loopback address (tcp://127.0.0.1:5555), or pass "
            "--curve-secret SERVER.key_secret and --curve-allow CLIENT_KEYS_DIR "
            "(make keys with: python -m backend keys DIR)")


def apply_server_curve(ctx: zmq.Context, sock: zmq.Socket, keys: CurveKeys) -> ThreadAuthenticator:
    """Make ``sock`` a CurveZMQ server that only admits the allow-listed client keys.
    Returns the running authenticator (stop it when the socket closes)."""
    auth = ThreadAuthenticator(ctx)
    auth.start()
    auth.configure_curve(domain="*", location=str(keys.allow_dir))
    sock.curve_secretkey = keys.secret
    sock.curve_publickey = keys.public
    sock.curve_server = True
    return auth


def make_keys(directory: str | os.PathLike, name: str) -> tuple[Path, Path]:
    """Write a key pair ``<name>.key`` (public) and ``<name>.key_secret`` into ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    public, secret = zmq.auth.create_certificates(directory, name)
    return Path(public), Path(secret)
