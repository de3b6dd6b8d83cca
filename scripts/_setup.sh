# Shared set-up for scripts/test and scripts/demo: system packages, venv, editable install.
# Sourced, not executed. Idempotent and quiet when everything is already there.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV="$ROOT/.venv"
SYSTEM_PACKAGES=(python3 python3-venv python3-dev sqlite3 mosquitto mosquitto-clients nodejs npm
    openssl curl libcoap3-bin)

_need_apt() {
    local missing=()
    command -v python3 >/dev/null || missing+=(python3)
    python3 -c 'import ensurepip, venv' 2>/dev/null || missing+=(python3-venv)
    command -v mosquitto >/dev/null || [[ -x /usr/sbin/mosquitto ]] || missing+=(mosquitto mosquitto-clients)
    command -v sqlite3 >/dev/null || missing+=(sqlite3)
    command -v node >/dev/null || missing+=(nodejs)
    command -v npm >/dev/null || missing+=(npm)
    # the shell recipe of docs/protocol.md §7, run by tests/gateway/test_protocol_shell.py
    command -v mosquitto_pub >/dev/null || missing+=(mosquitto-clients)
    command -v openssl >/dev/null || missing+=(openssl)
    command -v curl >/dev/null || missing+=(curl)
    command -v coap-client-notls >/dev/null || missing+=(libcoap3-bin)
    printf '%s\n' "${missing[@]}"
}

setup_system() {
    local missing
    missing=$(_need_apt)
    if [[ -n "$missing" ]]; then
        echo "safething: installing system packages: $(echo $missing | tr '\n' ' ')" >&2
        local sudo=""
        [[ $(id -u) -eq 0 ]] || sudo="sudo"
        $sudo apt-get update -qq
        # shellcheck disable=SC2086
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq $missing >/dev/null
    fi
}

# Debian's Chromium for the console's browser tests (Playwright drives it; browsers are never
# downloaded by `playwright install`). Only ./scripts/test needs it.
setup_browser() {
    if ! command -v chromium >/dev/null && [[ ! -x /usr/bin/chromium ]]; then
        echo "safething: installing chromium (console browser tests)" >&2
        local sudo=""
        [[ $(id -u) -eq 0 ]] || sudo="sudo"
        $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium >/dev/null
    fi
}

setup_venv() {
    local extras="${1:-dev}"
    local stamp="$VENV/.safething-installed-$extras"
    if [[ ! -x "$VENV/bin/python" ]]; then
        echo "safething: creating virtual environment in .venv" >&2
        python3 -m venv "$VENV"
        "$VENV/bin/pip" install -q --upgrade pip
    fi
    if [[ ! -f "$stamp" || "$ROOT/pyproject.toml" -nt "$stamp" || "$ROOT/constraints.txt" -nt "$stamp" ]]; then
        echo "safething: installing safething[$extras] (editable, versions from constraints.txt)" >&2
        "$VENV/bin/pip" install -q -c "$ROOT/constraints.txt" -e "$ROOT[$extras]"
        touch "$stamp"
    fi
    export PATH="$VENV/bin:$PATH"
}
