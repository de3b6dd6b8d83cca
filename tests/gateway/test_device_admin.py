"""DeviceAdmin: the one place that provisions and revokes a device (registry entry and
broker login), used by the CLI and the console."""

from __future__ import annotations

from pathlib import Path

import pytest

from safething_gateway.device_admin import BrokerReloadError, DeviceAdmin, reload_command
from safething_gateway.mosquitto import MosquittoAuth
from safething_gateway.registry import Registry


def test_an_existing_id_is_refused_before_its_broker_login_is_touched(
    registry: Registry, broker_files: Path
) -> None:
    auth = MosquittoAuth(broker_files / "passwd", broker_files / "acl")
    admin = DeviceAdmin(registry, auth=auth, reload=lambda: None)
    done = admin.provision("pump-0001", "mqtt")
    assert done.mqtt_login["username"] == "pump-0001" and done.notes == ()
    before = auth.password_file.read_text()
    with pytest.raises(ValueError, match="already provisioned"):
        admin.provision("pump-0001", "mqtt")
    assert auth.password_file.read_text() == before, "the first device's login was replaced"


def test_a_failed_registry_write_takes_the_new_login_back(
    registry: Registry, broker_files: Path
) -> None:
    auth = MosquittoAuth(broker_files / "passwd", broker_files / "acl")
    admin = DeviceAdmin(registry, auth=auth, reload=lambda: None)
    with pytest.raises(ValueError, match="unknown link version"):
        admin.provision("pump-0002", "mqtt", protocol=7)
    assert "pump-0002" not in auth.users()
    assert registry.find("pump-0002") is None


def test_revoke_removes_the_login_and_says_what_is_left_to_do(
    registry: Registry, broker_files: Path
) -> None:
    auth = MosquittoAuth(broker_files / "passwd", broker_files / "acl")
    admin = DeviceAdmin(registry, auth=auth, reload=reload_command("false"))
    done = admin.provision("pump-0003", "mqtt")
    assert any("'false' failed" in n for n in done.notes)
    registry.enqueue("pump-0003", "cmd", b"{}")
    assert len(registry.pending("pump-0003")) == 1
    notes = admin.revoke("pump-0003")
    assert notes[0] == "its broker login and ACL were removed"
    assert "pump-0003" not in auth.users() and "pump-0003" not in auth.acl_file.read_text()
    assert registry.get("pump-0003", allow_revoked=True).revoked
    assert registry.pending("pump-0003") == [], "its queued downlinks are dropped"
    with pytest.raises(BrokerReloadError, match="systemctl reload"):
        reload_command("")()


def test_devices_of_other_transports_get_no_broker_login(
    registry: Registry, broker_files: Path
) -> None:
    auth = MosquittoAuth(broker_files / "passwd", broker_files / "acl")
    admin = DeviceAdmin(registry, auth=auth, reload=lambda: None)
    assert admin.provision("bed-00001", "http").mqtt_login == {}
    assert auth.users() == []
    assert DeviceAdmin(registry).provision("bed-00002", "mqtt").mqtt_login == {}
