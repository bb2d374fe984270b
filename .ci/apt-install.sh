# Sourced by the installers of optional test tools (browser.sh, netns-tools.sh): never fails the run.
# apt_install NAME SKIPPED [--no-install-recommends] PACKAGE...
#   NAME prefixes the messages; SKIPPED says what is skipped when the packages cannot be installed.
#   Where it cannot install (not root, no apt-get), it says so and returns 0.
apt_install() {
    local name=$1 skipped=$2 options=()
    shift 2
    if [ "${1:-}" = --no-install-recommends ]; then
        options+=("$1")
        shift
    fi
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
        echo "$name: $* missing and not installable here (needs root and apt-get); $skipped" >&2
        return 0
    fi
    export DEBIAN_FRONTEND=noninteractive
    echo "$name: installing $*" >&2
    if ! apt-get install -y -q "${options[@]}" "$@" >/dev/null 2>&1; then
        # The package lists may be absent or stale on a fresh machine.
        apt-get update -q >/dev/null 2>&1
        apt-get install -y -q "${options[@]}" "$@" >/dev/null 2>&1 ||
            echo "$name: could not install $*; $skipped" >&2
    fi
    return 0
}
