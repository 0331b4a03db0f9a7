# Sourced by test/run and test/try: the Debian packages and the Python virtualenv that
# the tests and the demo need. Expects $repo to be the repository root.
# shellcheck shell=bash
: "${repo:?test/setup.sh needs \$repo, the repository root}"

log() { printf '==> %s\n' "$*"; }

# --- Debian packages --------------------------------------------------------
# Test hosts: debootstrap + systemd-nspawn, an HTTP proxy for their package
# downloads, network namespaces and nftables; shellcheck for the lint tier; the
# clients that ask a test host's monitoring agents (check_nrpe, snmpget).
apt_packages=(
    ca-certificates
    curl
    debootstrap
    git
    iproute2
    nagios-nrpe-plugin
    nftables
    shellcheck
    snmp
    systemd-container
    tinyproxy
)

ensure_packages() {
    local missing=() pkg
    for pkg in "${apt_packages[@]}"; do
        if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q '^install ok installed$'; then
            missing+=("$pkg")
        fi
    done
    if [[ ${#missing[@]} -eq 0 ]]; then
        return 0
    fi
    if [[ $EUID -ne 0 ]]; then
        echo "$(basename "$0"): missing Debian packages (${missing[*]}); run as root" >&2
        exit 1
    fi
    log "installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get -o DPkg::Lock::Timeout=600 update -qq
    apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends \
        "${missing[@]}" >/dev/null
}

# --- Python virtualenv --------------------------------------------------------
venv="$repo/.venv"
requirements="$repo/requirements-test.txt"

find_python() {
    local candidate
    for candidate in python3.11 python3; do
        if command -v "$candidate" >/dev/null 2>&1 &&
            "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
            command -v "$candidate"
            return 0
        fi
    done
    echo "$(basename "$0"): Python 3.11 is required (requirements-test.txt is pinned for it)" >&2
    return 1
}

ensure_venv() {
    local python stamp want
    python="$(find_python)"
    want="$(sha256sum "$requirements" | cut -d' ' -f1) $("$python" -VV | head -n1)"
    stamp="$venv/.requirements-test.stamp"
    # Several shells may share one checkout: let one of them build the venv.
    exec 9<"$requirements"
    flock 9
    if [[ -x "$venv/bin/python" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
        exec 9>&-
        return 0
    fi
    if ! "$venv/bin/python" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' \
        2>/dev/null; then
        log "creating $venv"
        "$python" -m venv --clear "$venv"
    fi
    log "installing requirements-test.txt into $venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
        --requirement "$requirements"
    printf '%s\n' "$want" >"$stamp"
    exec 9>&-
}

