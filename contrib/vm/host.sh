# shellcheck shell=bash
# Sourced by contrib/test-in-vm.sh and contrib/critest-in-vm.sh, from the
# checkout's top directory: the host's half of a VM run.
#
#   vm_image              build ../shared/vm's image unless it is there
#   vm_venv               the VM's venv, made and cached on the host; sets VENV, VENV_IMG
#   vm_share              a fresh share dir holding everything the guest unpacks; sets SHARE
#   vm_apparmor           Debian's apparmor_parser and /etc/apparmor.d into SHARE
#   vm_run CMD...         boot the VM on SHARE and run contrib/vm/guest.sh CMD... there
#
# Environment: PODVISOR_SHARED (../shared), PODVISOR_VM_CACHE
# (/var/cache/podvisor-vm), VM_IMAGE and the other knobs of ../shared/vm/run.sh
# (VM_APPEND: kernel arguments, such as the cgroup hierarchy to boot),
# which reach it through the environment untouched.

SHARED=${PODVISOR_SHARED:-$PWD/../shared}
CACHE=${PODVISOR_VM_CACHE:-/var/cache/podvisor-vm}
# The VM's interpreter: Debian 12's, which this host has too (install.sh
# installs python3-venv), so a venv made here runs there unchanged.
VM_PYTHON=/usr/bin/python3.11
HOST_PYTHON=${HOST_PYTHON:-$PWD/.venv/bin/python}
_t0=$(date +%s)

say() { echo "[vm $(($(date +%s) - _t0))s] $*" >&2; }

vm_image() {
    local image=${VM_IMAGE:-/opt/vm/image}
    [ -r "$image/disk.qcow2" ] && [ -r "$image/initrd.img" ] && return 0
    say "building the VM image in $image (../shared/vm/build.sh)"
    "$SHARED/vm/build.sh" "$image" >"$CACHE/build.log" 2>&1 \
        || { tail -30 "$CACHE/build.log" >&2; return 1; }
}

# The venv lives at the same path on the host (where pip fills it) and in
# the VM (where its image is mounted): $CACHE/venv-<key>, the key being a
# hash of the requirements and the interpreter. Its image is renamed into
# place last, so a run cut short leaves no image and the next one starts
# over; a venv of another key is removed.
vm_venv() {
    mkdir -p "$CACHE"
    local req key
    req=$("$HOST_PYTHON" contrib/vm/stage.py requirements) || return 1
    key=$(printf '%s\n%s\nformat 1\n' "$req" "$("$VM_PYTHON" -VV)" | sha256sum | cut -c1-16)
    VENV=$CACHE/venv-$key
    VENV_IMG=$VENV.img
    # stage.py byte-compiles podvisor with the venv's interpreter: the
    # directory must be there beside its image.
    [ -s "$VENV_IMG" ] && [ -x "$VENV/bin/python" ] && return 0
    exec 9>"$CACHE/venv.lock"
    flock 9
    if [ ! -s "$VENV_IMG" ] || [ ! -x "$VENV/bin/python" ]; then
        say "making the VM venv $VENV (cold cache)"
        rm -rf "$VENV" "$VENV_IMG.tmp"
        find "$CACHE" -maxdepth 1 -name 'venv-*' ! -name "venv-$key*" -exec rm -rf {} +
        "$VM_PYTHON" -m venv "$VENV"
        printf '%s\n' "$req" > "$VENV/requirements.txt"
        if ! "$VENV/bin/pip" install -q --disable-pip-version-check \
                -r "$VENV/requirements.txt" >"$CACHE/pip.log" 2>&1; then
            tail -30 "$CACHE/pip.log" >&2; rm -rf "$VENV"; flock -u 9; return 1
        fi
        "$VENV/bin/python" -m pip uninstall -q -y pip setuptools >>"$CACHE/pip.log" 2>&1
        # An ext4 image, loop-mounted read-only in the VM: only the files
        # imported are read, where unpacking a tarball there takes ~50 s.
        local mib
        mib=$(du -sm "$VENV" | cut -f1)
        mke2fs -q -t ext4 -O ^has_journal -L pv-venv -d "$VENV" "$VENV_IMG.tmp" \
            "$((mib + mib / 2 + 16))M"
        mv "$VENV_IMG.tmp" "$VENV_IMG"
        say "venv cached: $VENV_IMG ($(du -h "$VENV_IMG" | cut -f1))"
    fi
    flock -u 9
}

# Everything arrives as a few big files: 9p costs 10-25 ms per small file.
vm_share() {
    # Shares of runs killed before their cleanup, a day on.
    find "$CACHE" -maxdepth 1 -name 'run.*' -mmin +1440 -exec rm -rf {} +
    SHARE=$(mktemp -d "$CACHE/run.XXXXXX")
    chmod 755 "$SHARE"
    ln "$VENV_IMG" "$SHARE/venv.img" 2>/dev/null || cp "$VENV_IMG" "$SHARE/venv.img"
    printf '%s\n' "$VENV" > "$SHARE/venv.path"
    "$HOST_PYTHON" contrib/vm/stage.py podvisor "$SHARE/podvisor.tar" "$VENV"
    "$HOST_PYTHON" contrib/vm/stage.py tree "$SHARE/tree.tar"
    mkdir "$SHARE/bin"
    # Debian's registry links only libc: it runs in the VM as it is.
    cp /usr/bin/docker-registry "$SHARE/bin/"
    cp contrib/vm/guest.sh "$SHARE/"
}

# The guest's kernel runs AppArmor, its image has no apparmor_parser: without
# one, podvisor runs containers that ask for no profile unconfined and
# refuses RuntimeDefault. Debian's apparmor package (apparmor_parser links
# only libc), fetched once with apt-get and cached; guest.sh unpacks it.
vm_apparmor() {
    if [ ! -s "$CACHE/apparmor.tar" ]; then
        local aa
        aa=$(mktemp -d)
        if (cd "$aa" && apt-get download -q apparmor >/dev/null 2>&1) \
                && dpkg-deb -x "$aa"/apparmor_*.deb "$aa/root"; then
            tar -C "$aa/root" -cf "$CACHE/apparmor.tar.tmp" sbin/apparmor_parser etc/apparmor \
                etc/apparmor.d usr/share/apparmor-features
            mv "$CACHE/apparmor.tar.tmp" "$CACHE/apparmor.tar"
        else
            say "no apparmor package (apt-get download apparmor failed): no apparmor_parser in the VM"
        fi
        rm -rf "$aa"
    fi
    [ ! -s "$CACHE/apparmor.tar" ] || cp "$CACHE/apparmor.tar" "$SHARE/"
}

vm_run() {
    say "booting the VM (TCG: work inside is 15-80x slower)${VM_APPEND+; kernel arguments: $VM_APPEND}"
    "$SHARED/vm/run.sh" "$SHARE" bash guest.sh "$@"
}
