"""A fake ``dht`` module: DHT11/DHT22 sensors under CPython.

``measure()`` takes the next sample of a slow, deterministic drift (sample
number kept on the board in ``_hw_dht``) and reports it as
``{"hw": "dht", "n": ..., "temperature": ..., "humidity": ...}``. With a file
``_hw_dht_fail`` present it raises ``OSError(110)`` as the real driver does
when the sensor does not answer.
"""

from __future__ import annotations

from typing import Any

import _hw


def sample(n: int) -> tuple[float, float]:
    """(temperature in Cel, relative humidity in %) of sample ``n``, one decimal as a DHT22."""
    return round(18.0 + (n * 3 % 120) / 10, 1), round(35.0 + (n * 7 % 400) / 10, 1)


class DHTBase:
    def __init__(self, pin: Any) -> None:
        self.pin = pin
        self._t: float | None = None
        self._h: float | None = None

    def measure(self) -> None:
        if _hw.read("dht_fail") is not None:
            raise OSError(110)  # ETIMEDOUT
        n = _hw.count("dht")
        self._t, self._h = sample(n)
        _hw.emit("dht", n=n, temperature=self._t, humidity=self._h)

    def temperature(self) -> Any:
        return self._t

    def humidity(self) -> Any:
        return self._h


class DHT11(DHTBase):
    def temperature(self) -> Any:
        return None if self._t is None else int(self._t)

    def humidity(self) -> Any:
        return None if self._h is None else int(self._h)


class DHT22(DHTBase):
    pass
