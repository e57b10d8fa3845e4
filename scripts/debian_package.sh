# Sourced by scripts/install_*.sh: install a Debian package when its command is missing.
#
#   source "$(dirname "$0")/debian_package.sh"
#   if already_installed PACKAGE; then exit 0; fi
#   install_package PACKAGE
#
# The command is named as the package (chromium, prometheus). `install_package` leaves AS_ROOT
# set to what runs a command as root (empty when already root, else sudo), for follow-up steps.

# 0 (and says so) when PACKAGE's command is on the PATH.
already_installed() {
    local package=$1
    if command -v "$package" >/dev/null 2>&1; then
        echo "$package already installed: $(command -v "$package")"
        return 0
    fi
    return 1
}

# apt-get install PACKAGE, as root or through sudo; exits 1 with the command to run when neither.
install_package() {
    local package=$1
    AS_ROOT=()
    if [ "$(id -u)" -ne 0 ]; then
        if ! command -v sudo >/dev/null 2>&1; then
            echo "error: $package is missing and installing it needs root (no sudo here);" \
                 "run: apt-get install -y $package" >&2
            exit 1
        fi
        AS_ROOT=(sudo)
    fi
    export DEBIAN_FRONTEND=noninteractive
    "${AS_ROOT[@]}" apt-get update -qq
    # Only the binary is used: --no-install-recommends keeps out the rest (for Prometheus, the
    # node exporter and alertmanager).
    "${AS_ROOT[@]}" apt-get install -y -qq --no-install-recommends "$package" >/dev/null
    echo "$package installed: $(command -v "$package")"
}
