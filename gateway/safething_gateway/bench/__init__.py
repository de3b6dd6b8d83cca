"""The benchmarks that need the gateway: ``gateway.*`` and ``firmware.*`` groups.

They run under ``safething bench`` (the harness is :mod:`safething.bench`),
which imports these modules by name only when a selected group needs them.
"""

__all__: list[str] = []
