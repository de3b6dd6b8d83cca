from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from safething.cli import main
from safething.cli.md import parse_address


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("SAFETHING_STORE", f"sqlite://{tmp_path}/vault.db")
    monkeypatch.setenv("SAFETHING_IDENTITY", str(tmp_path / "identity.json"))
    monkeypatch.delenv("SAFETHING_PASSWORD", raising=False)
    return tmp_path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_identity_create_and_show(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "identity", "create", "--name", "pi", "--json")
    assert code == 0
    created = json.loads(out)
    assert created["name"] == "pi"
    code, out, _ = run(capsys, "identity", "show", "--json")
    assert json.loads(out)["public_sign_key"] == created["public_sign_key"]
    code, _, err = run(capsys, "identity", "create")
    assert code == 1
    assert "refusing to overwrite" in err


def test_password_protected_identity(
    env: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SAFETHING_PASSWORD", "s3cret")
    assert run(capsys, "identity", "create", "--password")[0] == 0
    assert "password-protected:    yes" in run(capsys, "identity", "show")[1]
    assert run(capsys, "md", "create", "box:27417")[0] == 0
    monkeypatch.setenv("SAFETHING_PASSWORD", "wrong")
    code, _, err = run(capsys, "md", "put", "box:27417", "k", "v")
    assert code == 1
    assert "wrong password" in err


def test_md_round_trip(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run(capsys, "identity", "create")
    assert run(capsys, "md", "create", "kitchen:27417", "--public-read")[0] == 0
    assert run(capsys, "md", "put", "kitchen:27417", "temp", "21.5")[0] == 0
    assert "(version 1)" in run(capsys, "md", "put", "kitchen:27417", "temp", "22")[1]
    code, out, _ = run(capsys, "md", "get", "kitchen:27417", "--json")
    doc = json.loads(out)
    assert code == 0
    assert doc["permissions"] == {"anyone": ["read"]}
    assert doc["entries"] == [
        {"key": "temp", "value": "22", "version": 1, "signer": doc["owners"][0]}
    ]
    assert "1 MutableData" in run(capsys, "md", "ls")[1]
    assert run(capsys, "md", "rm", "kitchen:27417", "temp")[0] == 0
    assert "<deleted>" in run(capsys, "md", "get", "kitchen:27417", "--deleted")[1]
    info = json.loads(run(capsys, "vault", "info", "--json")[1])
    assert info["backend"] == "sqlite"
    assert info["mutable_data"] == 1


def test_private_md_via_cli(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run(capsys, "identity", "create")
    out = run(capsys, "md", "create", "safe-box:27417", "--private")[1]
    secret = out.strip().rsplit(" ", 1)[-1]
    assert run(capsys, "md", "put", "safe-box:27417", "pin", "1234", "--secret", secret)[0] == 0
    code, _, err = run(capsys, "md", "get", "safe-box:27417")
    assert code == 1
    assert "private" in err
    out = run(capsys, "md", "get", "safe-box:27417", "pin", "--secret", secret)[1]
    assert "pin = 1234" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["md", "create", "x:500"], "type tag 500 is reserved"),
        (["md", "get", "nocolon"], "write NAME:TAG"),
        (["md", "get", "missing:27417"], "no MutableData at"),
        (["md", "put", "x:27417", "k", "v"], "safething identity create"),
        (["md", "create", "x:27417", "--grant", "nonsense"], "KEY=PERMS"),
        (["md", "create", "x:27417", "--grant", "anyone=fly"], "unknown permission"),
        (["vault", "info", "--store", "foo://x"], "unknown store URL"),
    ],
)
def test_bad_input_gives_one_clear_line(
    env: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    if argv[1] == "create":
        run(capsys, "identity", "create")
    if argv[:3] == ["md", "get", "missing:27417"]:  # a vault that exists, without that MD
        run(capsys, "identity", "create")
        run(capsys, "md", "create", "other:27417")
    code, out, err = run(capsys, *argv)
    assert code == 1
    assert message in err
    assert "Traceback" not in err + out


def test_tampered_store_exit_code(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run(capsys, "identity", "create")
    run(capsys, "md", "create", "door:27417")
    run(capsys, "md", "put", "door:27417", "lock", "closed")
    key = parse_address("door:27417").entry_key(b"lock")
    with sqlite3.connect(env / "vault.db") as db:
        db.execute("UPDATE records SET value = ? WHERE key = ?", (b"\x00junk", key))
    code, out, err = run(capsys, "md", "get", "door:27417", "lock")
    assert code == 3
    assert "refused tampered data" in err
    assert "closed" not in out
    code, out, _ = run(capsys, "md", "get", "door:27417")  # listing: reported, not shown
    assert code == 3
    assert "REJECTED" in out


def test_entry_point_runs_as_a_program(env: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "safething", "md", "get", "zz:27417"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    assert proc.stderr.startswith(f"safething: error: no vault at {env / 'vault.db'}")
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    "argv",
    [
        ["thing", "list"],
        ["md", "ls"],
        ["vault", "info"],
        ["thing", "show", "garden-01"],
        ["md", "get", "kitchen:27417"],
    ],
)
def test_reading_a_vault_that_does_not_exist_is_refused(
    env: Path, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    """A mistyped URL is an error, not an empty vault (and creates nothing)."""
    typo = env / "typo.db"
    for where in ([*argv, "--store", f"sqlite://{typo}"], ["--store", f"sqlite://{typo}", *argv]):
        code, _, err = run(capsys, *where)
        assert code == 1
        assert err.startswith(f"safething: error: no vault at {typo};")
        assert "safething md create" in err
        assert not typo.exists()
        assert not (env / "vault.db").exists()


def test_store_urls_expand_home_and_variables(
    env: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    home = env / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("VAULTS", str(env))
    run(capsys, "identity", "create")
    assert run(capsys, "md", "create", "kitchen:27417", "--store", "sqlite:///~/v.db")[0] == 0
    assert (home / "v.db").is_file()
    assert not Path("/~").exists()
    for url in ("sqlite://~/v.db", "sqlite:///$HOME/v.db", "sqlite:///${HOME}/v.db"):
        code, out, _ = run(capsys, "md", "ls", "--store", url)
        assert code == 0
        assert "1 MutableData" in out
    assert run(capsys, "md", "create", "k:27417", "--store", "sqlite:///$VAULTS/w.db")[0] == 0
    assert (env / "w.db").is_file()


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("sqlite://tmp/x.db", "reads as host 'tmp': write an absolute path after three slashes"),
        ("sqlite:///$SAFETHING_NO_SUCH_VARIABLE/x.db", "an environment variable in it is not set"),
        ("sqlite:///tmp/", "has no file name"),
    ],
)
def test_bad_store_urls_are_clear_errors(
    env: Path, capsys: pytest.CaptureFixture[str], url: str, message: str
) -> None:
    run(capsys, "identity", "create")
    code, out, err = run(capsys, "md", "create", "x:27417", "--store", url)
    assert code == 1
    assert message in err
    assert "Traceback" not in out + err


def test_writing_makes_no_directories_for_a_path_given(
    env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run(capsys, "identity", "create")
    target = env / "no" / "such" / "dir" / "x.db"
    code, _, err = run(capsys, "md", "create", "x:27417", "--store", f"sqlite://{target}")
    assert code == 1
    assert f"the directory {target.parent} does not exist" in err
    assert not (env / "no").exists()


def test_default_vault_directory_is_made(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SAFETHING_STORE", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.setenv("SAFETHING_IDENTITY", str(tmp_path / "identity.json"))
    run(capsys, "identity", "create")
    assert run(capsys, "md", "create", "x:27417")[0] == 0
    assert (tmp_path / "data" / "safething" / "vault.db").is_file()


@pytest.mark.parametrize(
    "argv",
    [
        ["--debug", "md", "ls", "--store", "sqlite:///nope/x.db"],
        ["md", "ls", "--debug", "--store", "sqlite:///nope/x.db"],
        ["--store", "sqlite:///nope/x.db", "md", "ls", "--debug"],
    ],
)
def test_global_options_before_or_after_the_subcommand(
    env: Path, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    """--debug raises (shows the traceback) wherever it is written; --store too."""
    from safething.errors import StoreError

    with pytest.raises(StoreError, match=r"no vault at /nope/x\.db"):
        main(argv)
