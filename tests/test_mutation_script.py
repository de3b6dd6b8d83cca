"""scripts/_mutation.py: a mutant of Cosmic Ray's exception-replacement operator (an
``except`` clause naming ``CosmicRayTestingException`` in place of the class it caught)
runs to its tests' outcome. Cosmic Ray never defines that name in the processes that run
the tests; without the definition the script gives them, any exception reaching the
handler became a NameError and the mutant counted as killed whatever the tests checked."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent

# The mutant of ``except ValueError:``, as Cosmic Ray 8.7.0 writes it.
MUTANT = """\
def parse(text):
    try:
        return int(text)
    except CosmicRayTestingException:
        return None
"""

# Tests that do not check what the handler does: the mutant survives them.
BLIND = """\
import subprocess
import sys

import pytest

from fragile import parse


def test_the_error_goes_through_the_handler():
    with pytest.raises(ValueError):
        parse("x")


def test_a_process_the_tests_start_runs_the_mutant_the_same_way():
    script = "import fragile\\ntry:\\n    fragile.parse('x')\\nexcept ValueError:\\n    print('ok')"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert out.stdout == "ok\\n", out.stderr
"""

# A test that checks the handler: the mutant is killed, genuinely.
CHECKING = """\
from fragile import parse


def test_not_a_number_is_none():
    assert parse("x") is None
"""


def _script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("_mutation", ROOT / "scripts/_mutation.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_an_exception_replacement_mutant_runs_to_its_tests_outcome(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    script = _script()
    (tmp_path / "scripts").mkdir()
    shutil.copy2(ROOT / "scripts/_mutation.py", tmp_path / "scripts/_mutation.py")
    (tmp_path / "fragile.py").write_text(MUTANT)
    (tmp_path / "test_blind.py").write_text(BLIND)
    (tmp_path / "test_checking.py").write_text(CHECKING)
    monkeypatch.chdir(tmp_path)
    env = script._environment(tmp_path)
    with script._fork_server(tmp_path, env) as served:
        monkeypatch.setenv(script._SERVER_VAR, served[script._SERVER_VAR])
        survived = script._bounded(["test_blind.py"], 300.0)
        blind = capfd.readouterr().out
        killed = script._bounded(["test_checking.py"], 300.0)
        checking = capfd.readouterr().out
    assert "NameError" not in blind + checking
    assert survived == 0, blind  # the tests pass: the mutant survives them
    assert killed == 1, checking  # a test that checks the handler still kills it
    assert "assert None is None" not in checking and "ValueError" in checking
    # and pytest started without the fork server (its fallback) gets the name too
    monkeypatch.delenv(script._SERVER_VAR)
    monkeypatch.setenv("PYTHONPATH", env["PYTHONPATH"])
    monkeypatch.setenv("PATH", env["PATH"])
    assert script._bounded(["test_blind.py"], 300.0) == 0, capfd.readouterr().out


def test_a_dotted_class_cosmic_ray_mangled_is_run_as_the_operator_means() -> None:
    # Cosmic Ray 8.7.0 renames the first dot of ``nacl.exceptions.CryptoError``
    intended = _script()._intended
    mangled = "        except naclCosmicRayTestingExceptionexceptions.CryptoError as e:\n"
    assert intended(mangled) == "        except CosmicRayTestingException as e:\n"
    meant = "    except (OSError, CosmicRayTestingException):\n"
    assert intended(meant) == meant
