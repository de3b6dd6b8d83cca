"""A private Mosquitto broker on a loopback port, run by the gateway itself.

The gateway starts one when its configuration asks for a private broker;
the test site (:mod:`safething_gateway.testing`), the demo and the
benchmarks start theirs through the same class.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Mosquitto", "broker_user", "free_port", "mosquitto"]


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def broker_user() -> str | None:
    """Who a broker started here runs as: the one rule for every private broker.

    Started by root, Mosquitto drops to its own ``mosquitto`` user (Debian's
    package creates it), so its directory and every file it reads (password
    file, ACL) must belong to that user: pass this as ``MosquittoAuth(owner=...)``.
    Without that user it stays root; started by anyone else it runs as them
    (None: nothing to hand over).
    """
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam("mosquitto").pw_name
    except KeyError:
        return "root"


def _binary() -> str:
    for candidate in (shutil.which("mosquitto"), "/usr/sbin/mosquitto"):
        if candidate and Path(candidate).exists():
            return candidate
    raise RuntimeError("mosquitto is not installed (apt-get install mosquitto)")


@dataclass
class Mosquitto:
    """A running broker; ``restart()`` keeps port, config and persistence."""

    port: int
    workdir: Path
    password_file: Path | None = None
    acl_file: Path | None = None
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def _config(self) -> Path:
        user = broker_user()
        lines = [
            *([f"user {user}"] if user is not None else []),
            f"listener {self.port} 127.0.0.1",
            "set_tcp_nodelay true",
            "persistence true",
            f"persistence_location {self.workdir}/",
            "max_queued_messages 100000",
            "max_queued_bytes 268435456",
            # as the shipped config (gateway/mosquitto-safething.conf): no message a
            # device could use to make the gateway hold megabytes
            "message_size_limit 65536",
            "max_packet_size 70000",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
        ]
        if self.password_file is not None:
            lines += [
                "allow_anonymous false",
                f"password_file {self.password_file}",
                # a client id is its login: nobody takes the gateway's (or a device's) id
                "use_username_as_clientid true",
            ]
        else:
            lines.append("allow_anonymous true")
        if self.acl_file is not None:
            lines.append(f"acl_file {self.acl_file}")
        path = self.workdir / "mosquitto.conf"
        path.write_text("\n".join(lines) + "\n")
        return path

    def start(self) -> None:
        user = broker_user()
        if user is not None and user != "root":  # it writes its persistence file here
            shutil.chown(self.workdir, user)
        with open(self.workdir / "mosquitto.log", "ab") as log_file:
            self.process = subprocess.Popen(
                [_binary(), "-c", str(self._config())],
                stdout=subprocess.DEVNULL,
                stderr=log_file,
                start_new_session=True,  # Ctrl-C in a terminal reaches us, not the broker
            )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                log = (self.workdir / "mosquitto.log").read_text(errors="replace")
                raise RuntimeError(f"mosquitto exited: {log[-500:]}")
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2),
            ):
                return
            time.sleep(0.02)
        raise RuntimeError(f"mosquitto did not listen on port {self.port}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def reload(self) -> None:
        """Re-read password and ACL files (SIGHUP), as after provisioning."""
        if self.process is not None:
            self.process.send_signal(1)

    def restart(self) -> None:
        self.stop()
        self.start()


@contextlib.contextmanager
def mosquitto(
    *, password_file: Path | None = None, acl_file: Path | None = None
) -> Iterator[Mosquitto]:
    """Start a private Mosquitto on a free 127.0.0.1 port; stop it on exit."""
    with tempfile.TemporaryDirectory(prefix="safething-mosquitto-") as tmp:
        broker = Mosquitto(free_port(), Path(tmp), password_file, acl_file)
        broker.start()
        try:
            yield broker
        finally:
            broker.stop()
