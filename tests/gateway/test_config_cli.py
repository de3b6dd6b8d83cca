from __future__ import annotations

import json
import stat
import time
from pathlib import Path

import pytest

from safething.cli import main
from safething_gateway.config import ConfigError, load_config
from safething_gateway.registry import Registry


def test_defaults_and_file(tmp_path: Path) -> None:
    assert load_config().http.port == 8080
    path = tmp_path / "gateway.toml"
    path.write_text("[http]\nport = 9000\n[gateway]\nrate_limit = 5\n")
    config = load_config(path)
    assert config.http.port == 9000
    assert config.gateway.rate_limit == 5.0
    assert config.with_overrides(http={"port": 0}).http.port == 0


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[htp]\nport = 1\n", "unknown section"),
        ("[http]\nprot = 1\n", "unknown setting"),
        ('[http]\nport = "80"\n', "must be a int"),
        ("[gateway]\nrate_limit = 0\n", "rate_limit"),
        ("[http\n", "not valid TOML"),
    ],
)
def test_bad_config_is_a_clear_error(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(path)


def test_provision_list_revoke(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text(f'[gateway]\nregistry = "{tmp_path}/gw.db"\n[coap]\nport = 5999\n')
    out = tmp_path / "dev.json"
    code = main(
        [
            "provision",
            "sensor-07",
            "--transport",
            "coap",
            "--config",
            str(config),
            "--out",
            str(out),
            "--host",
            "192.0.2.10",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "provisioned sensor-07" in printed
    assert "\u2588" in printed or "\u2580" in printed  # a QR code was drawn
    doc = json.loads(out.read_text())
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert doc["coap"] == {"host": "192.0.2.10", "port": 5999}
    registry = Registry(tmp_path / "gw.db")
    assert registry.get("sensor-07").secret.hex() == doc["secret"]
    registry.close()
    assert (
        main(
            [
                "provision",
                "sensor-07",
                "--transport",
                "coap",
                "--config",
                str(config),
                "--out",
                str(out),
                "--no-qr",
            ]
        )
        == 1
    )
    assert "already provisioned" in capsys.readouterr().err
    assert main(["device", "list", "--config", str(config), "--json"]) == 0
    row = json.loads(capsys.readouterr().out.splitlines()[0])
    assert row["device_id"] == "sensor-07"
    assert row["state"] == "offline"
    assert main(["device", "revoke", "sensor-07", "--config", str(config)]) == 0
    capsys.readouterr()
    main(["device", "list", "--config", str(config), "--json"])
    assert json.loads(capsys.readouterr().out.splitlines()[0])["state"] == "revoked"
    assert main(["device", "revoke", "nobody-00", "--config", str(config)]) == 1
    assert main(["provision", "x", "--transport", "http", "--config", str(config)]) == 1
    assert "invalid device id" in capsys.readouterr().err


def test_the_shipped_example_config_loads() -> None:
    config = load_config(Path(__file__).parents[2] / "gateway" / "gateway.example.toml")
    assert config.mqtt.reload_command == "sudo systemctl reload mosquitto"
    assert config.mqtt.files_group == "mosquitto"
    assert config.gateway.log_format == "json"


def test_mqtt_provisioning_creates_a_broker_login_and_revoke_removes_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from safething_gateway.testing import mosquitto

    passwd, acl = tmp_path / "mosquitto.passwd", tmp_path / "mosquitto.acl"
    config = tmp_path / "gateway.toml"
    config.write_text(
        f'[gateway]\nregistry = "{tmp_path}/gw.db"\n'
        f'[mqtt]\npassword_file = "{passwd}"\nacl_file = "{acl}"\n'
    )
    assert main(["broker-login", "--config", str(config)]) == 0
    assert 'username = "safething-gateway"' in capsys.readouterr().out
    out = tmp_path / "dev.json"
    assert (
        main(
            [
                "provision",
                "valve-01",
                "--transport",
                "mqtt",
                "--config",
                str(config),
                "--out",
                str(out),
                "--no-qr",
            ]
        )
        == 0
    )
    creds = json.loads(out.read_text())["mqtt"]
    assert creds["username"] == "valve-01"

    with mosquitto(password_file=passwd, acl_file=acl) as broker:
        assert _login(broker.port, "valve-01", creds["password"]) == "Success"
        assert _login(broker.port, "valve-01", "not-the-password") != "Success"
        # revoking through the CLI removes the login and reloads the broker
        assert broker.process is not None
        config.write_text(
            config.read_text() + f'reload_command = "kill -HUP {broker.process.pid}"\n'
        )
        capsys.readouterr()
        assert main(["device", "revoke", "valve-01", "--config", str(config)]) == 0
        assert "its broker login and ACL were removed" in capsys.readouterr().out
        assert "valve-01" not in passwd.read_text()
        assert "valve-01" not in acl.read_text()
        deadline = time.monotonic() + 10  # the broker re-reads its files on SIGHUP
        while _login(broker.port, "valve-01", creds["password"]) == "Success":
            assert time.monotonic() < deadline, "the revoked device can still log in"
            time.sleep(0.05)


def _login(port: int, username: str, password: str) -> str:
    """The broker's answer to a login, e.g. "Success" or "Not authorized"."""
    import paho.mqtt.client as mqtt

    result: dict[str, object] = {}
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    client.username_pw_set(username, password)
    client.on_connect = lambda c, u, f, rc, p: result.setdefault("rc", rc)
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        deadline = time.monotonic() + 10
        while "rc" not in result and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        client.loop_stop()
        client.disconnect()
    assert "rc" in result, "the broker did not answer the login"
    return str(result["rc"])
