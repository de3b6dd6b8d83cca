"""File modes checked at start-up: the registry holds every device's secret, the
configuration file may hold the broker password."""

from __future__ import annotations

from pathlib import Path

import pytest

from safething.cli import main
from safething_gateway.config import ConfigError, load_config
from safething_gateway.registry import Registry


def test_an_existing_registry_readable_by_others_is_set_to_0600(tmp_path: Path) -> None:
    path = tmp_path / "gateway.db"
    Registry(path).close()
    path.chmod(0o644)
    registry = Registry(path)
    try:
        assert path.stat().st_mode & 0o777 == 0o600
        for side in tmp_path.glob("gateway.db-*"):
            assert side.stat().st_mode & 0o077 == 0, side
    finally:
        registry.close()


@pytest.mark.parametrize("mode", [0o644, 0o604, 0o641])
def test_a_config_with_the_broker_password_and_a_loose_mode_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], mode: int
) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text(f'[gateway]\nregistry = "{tmp_path}/gw.db"\n[mqtt]\npassword = "s3cret"\n')
    config.chmod(mode)
    with pytest.raises(ConfigError, match=r"broker password.*chmod 600"):
        load_config(config)
    # the gateway refuses to start, with that sentence and no traceback
    assert main(["gateway", "--config", str(config)]) != 0
    err = capsys.readouterr().err
    assert "holds the broker password" in err and "Traceback" not in err
    assert not (tmp_path / "gw.db").exists()  # refused before anything was opened


@pytest.mark.parametrize("mode", [0o600, 0o640])
def test_a_config_with_the_broker_password_and_a_tight_mode_loads(
    tmp_path: Path, mode: int
) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text('[mqtt]\npassword = "s3cret"\n')
    config.chmod(mode)
    assert load_config(config).mqtt.password == "s3cret"


def test_a_config_others_may_write_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text("[http]\nport = 9000\n")
    config.chmod(0o666)
    with pytest.raises(ConfigError, match="others may change it"):
        load_config(config)
    config.chmod(0o644)  # no secret in it: readable is fine
    assert load_config(config).http.port == 9000
