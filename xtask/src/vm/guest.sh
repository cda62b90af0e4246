#!/bin/sh
# Runs inside the VM that `cargo xtask vm-test` boots, as root, over the host's root file system:
#   guest.sh RESULTS ENV_FILE TEST_BINARY ARGS...
# Output goes to RESULTS/log.txt and the test binary's exit code to RESULTS/exit, which the
# host reads back (RESULTS is shared read-write).
results=$1
env_file=$2
test_binary=$3
shift 3
exec >"$results/log.txt" 2>&1
echo "guest: $(uname -r), cgroup2 at /sys/fs/cgroup: $(stat -f -c %T /sys/fs/cgroup)"
# Load veth before anything is mounted over the module tree.
modprobe veth || echo "guest: modprobe veth failed"
# Unix sockets cannot bind on 9p: the handover socket and the tests' sockets live in /tmp.
mount -t tmpfs -o mode=1777 tmpfs /tmp
mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf
# The root file system is 9p without a page cache (every exec and every Python import reads
# over 9p again). The runner also shares the host's root read-only as `hostroot`; mounted with
# the page cache, it serves trees that are only read: programs, shared libraries, Python's
# standard library, the SDK venv and the test scripts. (Not all of /usr: virtme-ng links the
# guest kernel's modules into /usr/lib/modules, which the kernel needs for modules it loads
# on demand, such as nf_tables for iptables.)
mkdir -p /tmp/hostroot
if mount -t 9p -o trans=virtio,version=9p2000.L,cache=loose,msize=512000,ro hostroot /tmp/hostroot; then
    for dir in /usr/bin /usr/sbin /usr/lib/x86_64-linux-gnu /usr/lib/python3* \
        "$PWD/tests" "$PWD/target/sdk"; do
        [ -d "$dir" ] && mount --bind "/tmp/hostroot$dir" "$dir"
    done
else
    echo "guest: no cached share of the host's root; reading it uncached"
fi
. "$env_file"
# The root file system is 9p without a page cache: every exec of a large binary reads it all
# again (4 s for the debug agent under emulation, 0.6 s from memory). Run the project's own
# binaries from a copy in memory, without their debug info.
mkdir -p /tmp/iamlet-bin
in_memory() {
    src=$1
    dst=/tmp/iamlet-bin/$(basename "$src")
    objcopy --strip-debug "$src" "$dst" && echo "$dst"
}
for var in IAMLET_BIN IAMLET_RUST_CLIENT IAMLET_FAKE_KUBE_APISERVER IAMLET_STS_PROXY; do
    eval "src=\${$var:-}"
    if [ -n "$src" ] && [ -f "$src" ]; then
        eval "export $var=\$(in_memory \"\$src\")"
    fi
done
test_binary=$(in_memory "$test_binary")
echo "guest: binaries in memory after $(cut -d' ' -f1 /proc/uptime) s of uptime"
"$test_binary" "$@"
code=$?
echo "$code" >"$results/exit"
