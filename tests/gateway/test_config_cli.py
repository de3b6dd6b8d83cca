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
        ("[leaf]\nenabled = true\n", "leaf-node URL"),
        ('[leaf]\nenabled = true\nhub = "nats-leaf://h:7422"\ndomain = "a.b"\n', "domain"),
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
    assert doc["link"] == "ST2" and registry.get("sensor-07").protocol == 2  # the default
    registry.close()
    old = tmp_path / "old.json"
    args = ["provision", "sensor-08", "--transport", "http", "--config", str(config)]
    args += ["--host", "192.0.2.10"]
    assert main([*args, "--out", str(old), "--no-qr", "--link", "ST1"]) == 0
    assert "ST1 sends bodies in clear" in capsys.readouterr().out
    assert json.loads(old.read_text())["link"] == "ST1"
    registry = Registry(tmp_path / "gw.db")
    assert registry.get("sensor-08").protocol == 1
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
                "--host",
                "192.0.2.10",
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
    assert row["link"] == "ST2"
    assert main(["device", "revoke", "sensor-07", "--config", str(config)]) == 0
    capsys.readouterr()
    main(["device", "list", "--config", str(config), "--json"])
    assert json.loads(capsys.readouterr().out.splitlines()[0])["state"] == "revoked"
    assert main(["device", "revoke", "nobody-00", "--config", str(config)]) == 1
    argv = ["provision", "x", "--transport", "http", "--config", str(config), "--host", "gw"]
    assert main(argv) == 1
    assert "invalid device id" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("transport", "section"),
    [("mqtt", '[mqtt]\nhost = "127.0.0.1"'), ("coap", '[coap]\nbind = "0.0.0.0"'), ("http", "")],
)
def test_provision_refuses_an_address_a_board_cannot_reach(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], transport: str, section: str
) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text(f'[gateway]\nregistry = "{tmp_path}/gw.db"\n{section}\n')
    out = tmp_path / "dev.json"
    argv = ["provision", "sensor-07", "--transport", transport, "--config", str(config)]
    argv += ["--out", str(out), "--no-qr", "--wifi-ssid", "garden"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert f"the {transport} address in the gateway config is" in err
    assert "which a device cannot reach; give the address it should use with --host" in err
    assert not out.exists()
    assert not (tmp_path / "gw.db").exists() or not Registry(tmp_path / "gw.db").devices()
    # said on purpose (a device on this machine): accepted as written
    assert main([*argv, "--host", "127.0.0.1"]) == 0
    doc = json.loads(out.read_text())
    written = doc[transport].get("host") or doc[transport]["url"]
    assert "127.0.0.1" in written


def test_lan_address_suggested_is_not_loopback() -> None:
    from safething.cli.gateway import lan_address

    address = lan_address()
    assert address is None or not address.startswith("127.")


@pytest.mark.parametrize(
    ("wifi", "message"),
    [
        (["--wifi-ssid", ""], "--wifi-ssid is empty"),
        (["--wifi-ssid", "   "], "--wifi-ssid is empty"),
        (["--wifi-password", "x"], "--wifi-password without --wifi-ssid"),
        (["--wifi-ssid", "x" * 33], "longer than 32 bytes"),
    ],
)
def test_provision_refuses_a_wifi_network_without_a_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], wifi: list[str], message: str
) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text(f'[gateway]\nregistry = "{tmp_path}/gw.db"\n')
    out = tmp_path / "dev.json"
    argv = ["provision", "sensor-07", "--transport", "coap", "--config", str(config)]
    assert main([*argv, "--out", str(out), "--host", "192.0.2.10", "--no-qr", *wifi]) == 1
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_device_list_without_a_registry_creates_none(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.delenv("SAFETHING_GATEWAY_CONFIG", raising=False)
    for argv in (["device", "list"], ["device", "revoke", "sensor-07"]):
        assert main(argv) == 1
        err = capsys.readouterr().err
        assert "no gateway registry at" in err
        assert "--config /etc/safething/gateway.toml" in err
    assert not (tmp_path / "data").exists()


def test_the_config_comes_from_the_environment(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text(f'[gateway]\nregistry = "{tmp_path}/gw.db"\n')
    monkeypatch.setenv("SAFETHING_GATEWAY_CONFIG", str(config))
    assert load_config().source == str(config)
    argv = ["provision", "sensor-07", "--transport", "coap", "--host", "192.0.2.10"]
    assert main([*argv, "--out", str(tmp_path / "d.json"), "--no-qr"]) == 0
    assert main(["device", "list"]) == 0
    assert "sensor-07" in capsys.readouterr().out


def test_the_default_config_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With neither --config nor the variable: /etc/safething/gateway.toml when it exists."""
    from safething_gateway import config as config_module

    monkeypatch.delenv("SAFETHING_GATEWAY_CONFIG", raising=False)
    assert Path("/etc/safething/gateway.toml") == config_module.DEFAULT_CONFIG
    monkeypatch.setattr(config_module, "DEFAULT_CONFIG", tmp_path / "gateway.toml")
    assert load_config().source == "defaults"
    (tmp_path / "gateway.toml").write_text("[coap]\nport = 5999\n")
    loaded = load_config()
    assert (loaded.source, loaded.coap.port) == (str(tmp_path / "gateway.toml"), 5999)


def test_the_example_config_shows_every_setting_with_its_default_unless_marked() -> None:
    """gateway.example.toml says: every setting; the default unless marked (default: ...)."""
    import dataclasses
    import tomllib

    from safething_gateway.config import GatewayConfig

    path = Path(__file__).parents[2] / "gateway" / "gateway.example.toml"
    marked: set[tuple[str, str]] = set()
    section_name = ""
    for line in path.read_text().splitlines():
        if line.startswith("["):
            section_name = line.strip("[] ")
        elif "=" in line and "(default:" in line:
            marked.add((section_name, line.split("=")[0].strip()))
    data = tomllib.loads(path.read_text())
    defaults = GatewayConfig()
    for section in dataclasses.fields(GatewayConfig):
        if section.name == "source":
            continue
        shown = data.get(section.name)
        assert shown is not None, f"[{section.name}] is missing"
        for field in dataclasses.fields(getattr(defaults, section.name)):
            assert field.name in shown, f"[{section.name}] {field.name} is missing"
            if (section.name, field.name) not in marked:
                default = getattr(getattr(defaults, section.name), field.name)
                assert shown[field.name] == default, (
                    f"[{section.name}] {field.name} differs from the default without saying so"
                )


def test_secrets_come_from_a_private_file_or_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SAFETHING_MQTT_PASSWORD", raising=False)
    config = tmp_path / "gateway.toml"
    config.write_text('[mqtt]\nusername = "gw"\n')
    assert load_config(config).mqtt.password == ""
    secrets = tmp_path / "secrets.toml"
    secrets.write_text('[mqtt]\npassword = "from-file"\n')
    secrets.chmod(0o644)
    with pytest.raises(ConfigError, match="holds secrets and has mode 0644"):
        load_config(config)
    secrets.chmod(0o600)
    assert load_config(config).mqtt.password == "from-file"
    monkeypatch.setenv("SAFETHING_MQTT_PASSWORD", "from-env")
    assert load_config(config).mqtt.password == "from-env"
    monkeypatch.delenv("SAFETHING_MQTT_PASSWORD")
    secrets.write_text('[mqtt]\npassword = "x"\nhost = "evil.example"\n')
    with pytest.raises(ConfigError, match="only secrets belong here"):
        load_config(config)
    other = tmp_path / "elsewhere.toml"
    config.write_text(f'[gateway]\nsecrets = "{other}"\n')
    with pytest.raises(ConfigError, match="no secrets file at"):
        load_config(config)


def test_the_shipped_example_config_loads() -> None:
    config = load_config(Path(__file__).parents[2] / "gateway" / "gateway.example.toml")
    assert config.mqtt.reload_command == "sudo systemctl reload mosquitto"
    assert config.mqtt.files_group == "mosquitto"
    assert config.gateway.log_format == "json"


def test_mqtt_provisioning_creates_a_broker_login_and_revoke_removes_it(
    tmp_path: Path, broker_files: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from safething_gateway.testing import broker_user, mosquitto

    passwd, acl = broker_files / "mosquitto.passwd", broker_files / "mosquitto.acl"
    user = broker_user()  # as on a Pi: the files are readable by the broker's group
    group = f'files_group = "{user}"\n' if user not in (None, "root") else ""
    config = tmp_path / "gateway.toml"
    config.write_text(
        f'[gateway]\nregistry = "{tmp_path}/gw.db"\n'
        f'[mqtt]\npassword_file = "{passwd}"\nacl_file = "{acl}"\n{group}'
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
                "--host",
                "192.0.2.10",
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
