# Sourced by the extension build scripts: installs missing Debian packages with apt-get (as root,
# or through passwordless sudo), retrying once after refreshing the package lists. The caller
# defines `die` and `step`; SKIP_APT=1 turns a missing package into an error instead.

ensure_packages() {
    local missing=() package sudo
    for package in "$@"; do
        if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "ok installed"; then
            missing+=("$package")
        fi
    done
    ((${#missing[@]})) || return 0
    [[ "${SKIP_APT:-0}" != 1 ]] || die "missing Debian packages: ${missing[*]} (SKIP_APT=1 is set)"
    command -v apt-get >/dev/null || die "missing Debian packages ${missing[*]} and no apt-get on this machine"
    if ((EUID == 0)); then
        sudo=()
    elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
        sudo=(sudo -n)
    else
        die "missing Debian packages: ${missing[*]}; install them as root: apt-get install -y ${missing[*]}"
    fi
    step "installing ${missing[*]}"
    if ! "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"; then
        step "apt-get install failed; refreshing the package lists and retrying"
        "${sudo[@]}" apt-get update -q || die "apt-get update failed"
        "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" ||
            die "could not install ${missing[*]}"
    fi
}
