"""The transport-independent device side: counters, sealing and opening, downlink handling."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from safething_gateway.protocol import (
    VERSION,
    BadMessageError,
    ReplayError,
    check_channel,
    decode_body,
    encode_body,
    frame,
    parse_frame,
)

__all__ = ["DeviceLink"]

ActionHandler = Callable[[str, dict[str, Any]], Any]
"""``handler(action, args) -> result``; raise to report *failed*."""


class DeviceLink:
    """What a device keeps: id, secret, description, and both counters (persisted).

    The uplink counter is the nonce of the encryption: without ``state_file`` it lives
    in memory only, so a new ``DeviceLink`` for a device that already sent messages
    would send new bodies under old counters (refused as replays, but readable XORed
    with the old ones). Give a ``state_file`` to anything that outlives a process."""

    def __init__(
        self,
        device_id: str,
        secret: bytes,
        description: dict[str, Any],
        *,
        state_file: Path | None = None,
        content_format: str = "json",
        version: int = VERSION,
    ) -> None:
        self.device_id = device_id
        self.secret = secret
        self.version = version
        """The link version the device was provisioned with (2: ST2, bodies encrypted)."""
        self.description = description
        self.content_format = content_format
        self.state_file = state_file
        self.up_counter = 0
        self.down_counter = 0
        if state_file is not None and state_file.exists():
            state = json.loads(state_file.read_text())
            self.up_counter, self.down_counter = int(state["up"]), int(state["down"])
        self.on_action: ActionHandler | None = None
        self.on_desired: Callable[[dict[str, Any]], None] | None = None
        self.desired: dict[str, Any] = {}
        self.actions_run: list[str] = []

    def _save(self) -> None:
        if self.state_file is None:
            return
        data = json.dumps({"up": self.up_counter, "down": self.down_counter})
        fd, tmp = tempfile.mkstemp(dir=self.state_file.parent)
        with os.fdopen(fd, "w") as f:
            f.write(data)
        os.replace(tmp, self.state_file)

    def up(self, channel: str, body: Any) -> bytes:
        """A framed uplink with the next counter."""
        check_channel(channel)
        self.up_counter += 1
        self._save()
        raw = body if isinstance(body, bytes) else encode_body(body, self.content_format)
        return frame(
            self.secret,
            self.device_id,
            channel,
            self.up_counter,
            raw,
            version=self.version,
            uplink=True,
        )

    def birth(self) -> bytes:
        return self.up("birth", {"description": self.description})

    def handle_down(self, channel: str, data: bytes) -> list[tuple[str, bytes]]:
        """Verify and act on a downlink; return the uplinks to send (ack, results).

        A downlink seen before (counter not above the last) is acknowledged again
        and not re-run: the gateway resends what was not acknowledged.
        """
        check_channel(channel, uplink=False)
        message = parse_frame(data)
        if message.version != self.version:
            raise BadMessageError(f"an ST{message.version} downlink on an ST{self.version} link")
        plain = message.open(self.secret, self.device_id, channel, uplink=False)
        if message.counter <= self.down_counter:
            return [("ack", self.up("ack", {"down": self.down_counter}))]
        body = decode_body(plain, "json")  # downlink bodies are always JSON
        self.down_counter = message.counter
        self._save()
        out: list[tuple[str, bytes]] = [("ack", self.up("ack", {"down": message.counter}))]
        if channel.startswith("action/"):
            out += self._run_action(channel[len("action/") :], body)
        elif channel == "desired" and isinstance(body, dict):
            self.desired.update(body)
            if self.on_desired is not None:
                self.on_desired(body)
            out.append(("reading", self.up("reading", body)))
        return out

    def _run_action(self, request_id: str, body: Any) -> list[tuple[str, bytes]]:
        channel = f"result/{request_id}"
        if request_id in self.actions_run:  # a resend after a gateway restart
            return []
        self.actions_run.append(request_id)
        del self.actions_run[:-100]
        action = str(body.get("action")) if isinstance(body, dict) else ""
        args = body.get("args", {}) if isinstance(body, dict) else {}
        out = [(channel, self.up(channel, {"state": "running", "progress": 0}))]
        try:
            result = self.on_action(action, args) if self.on_action else None
        except Exception as e:
            return [*out, (channel, self.up(channel, {"state": "failed", "message": str(e)}))]
        return [*out, (channel, self.up(channel, {"state": "done", "result": result}))]

    @staticmethod
    def replayed(error: Exception) -> bool:
        return isinstance(error, ReplayError)
