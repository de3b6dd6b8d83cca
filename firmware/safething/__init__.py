# SAFEthing device library for MicroPython (ESP8266-class boards).
# Nothing is imported here: each module is loaded only when used, to spare RAM.
# Start with safething.device.Device; see firmware/README.md. Imports inside the
# package are relative, so host tests can load it under another name (CPython's
# `safething` is the core package).
__version__ = "1.0.0"
