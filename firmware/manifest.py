# Freezes the SAFEthing library into a MicroPython ESP8266 image: the bytecode
# then runs from flash and takes (almost) no heap. From a MicroPython checkout:
#   make -C mpy-cross
#   make -C ports/esp8266 BOARD=ESP8266_GENERIC FROZEN_MANIFEST=/path/to/firmware/manifest.py
# (needs the ESP8266 toolchain: see ports/esp8266/README.md in that checkout).
include("$(BOARD_DIR)/manifest_2MiB.py")  # the board's own modules: umqtt.simple, requests...
package("safething")
