# Sourced by build-device.sh and test-arm.sh: `cross_env TRIPLE` points cargo at
# Debian's multiarch Rust and the cross gcc for TRIPLE (see setup-cross.sh) and sets
# `build_std` to the cargo flags that build std from source where Debian packages no
# std for TRIPLE (armv7), and `runner` to the qemu-user command that runs its binaries.
cross_env() {
    local triple=$1 upper gcc_prefix
    upper=$(echo "$triple" | tr 'a-z-' 'A-Z_')
    case "$triple" in
        aarch64-unknown-linux-gnu)
            gcc_prefix=aarch64-linux-gnu
            # A Raspberry Pi 4 core (plain NEON). No -L: the arm64 libc is installed
            # multiarch, and with -L threaded programs hang in pthread_create.
            runner="qemu-aarch64-static -cpu cortex-a72" ;;
        armv7-unknown-linux-gnueabihf)
            gcc_prefix=arm-linux-gnueabihf
            # With Debian's armhf std (setup-cross.sh) its libc is installed multiarch,
            # and -L would break threads as on aarch64 (the threaded tests segfault).
            # Without it (build-std), the binaries' libc is the cross one's tree.
            if [[ -e /lib/ld-linux-armhf.so.3 ]]; then
                runner="qemu-arm-static"
            else
                runner="qemu-arm-static -L /usr/arm-linux-gnueabihf"
            fi
            # tract probes NEON through /proc/cpuinfo, which qemu-user does not fake.
            export TRACT_CPU_ARM32_NEON=1 ;;
        *) echo "no cross toolchain recipe for $triple" >&2; return 1 ;;
    esac
    for tool in /usr/bin/rustc "$gcc_prefix-gcc"; do
        command -v "$tool" >/dev/null || { echo "$tool missing: run scripts/setup-cross.sh (README, \"ARM boards\")" >&2; return 1; }
    done
    # Debian's rustc is another compiler than the host's: keep its artefacts apart.
    export RUSTC=/usr/bin/rustc RUSTDOC=/usr/bin/rustdoc
    export "CARGO_TARGET_${upper}_LINKER=$gcc_prefix-gcc"
    export "CC_${triple//-/_}=$gcc_prefix-gcc" "AR_${triple//-/_}=$gcc_prefix-ar"
    build_std=()
    if [[ ! -d "/usr/lib/rustlib/$triple" ]]; then
        export RUSTC_BOOTSTRAP=1
        build_std=(-Zbuild-std)
    fi
}
