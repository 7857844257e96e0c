#!/usr/bin/env bash
# Build the tiny kernel and boot it in QEMU.
#
#   ./qemu-run.sh                 demo: a short report of what the stack does
#   ./qemu-run.sh test [filter]   the guest test suite (tests whose name contains filter)
#   ./qemu-run.sh bench [filter]  benchmarks -> target/bench/latest.csv and a table; the
#                                 group insns (guest instructions per request) boots
#                                 apart, under -icount shift=0,sleep=off -smp 1: run
#                                 when the filter is empty, insns or insns.KEY
#   ./qemu-run.sh soak [requests] random copies, fills and zeroes (default 1000000)
#   ./qemu-run.sh example         kernels of the README's kind adopt the mm half, the DMA half, the IOMMU
#   ./qemu-run.sh selftest        the harness's canaries (must report failures)
#   ./qemu-run.sh MODE [filter] -- EXTRA QEMU ARGS
#
# Environment: ACCEL=tcg|kvm (default tcg: the KVM here is a slow software
# one), TIMEOUT=seconds (per boot), QEMU=path to qemu-system-x86_64 and
# QEMU_DATA=its data folder (-L; .ci/fetch-qemu-10 prints both for QEMU 10),
# SEED=n (the seed of the randomized tests; a new one each run otherwise,
# printed by the guest as its second line), IOMMU=on|off (default on: q35
# with an Intel VT-d unit; off: the pc machine without one).
# Exit status: 0 when the guest (each boot) reports success, non-zero otherwise (guest
# failure, unknown mode, filter matching nothing, timeout, triple fault).
set -uo pipefail
cd "$(dirname "$0")" || exit 2

die() { echo "qemu-run: $*" >&2; exit 2; }
usage() { sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; }

mode=${1:-demo}
[ $# -gt 0 ] && shift
case "$mode" in
    demo|test|bench|soak|example|selftest) ;;
    -h|--help|help) usage; exit 0 ;;
    *) usage >&2; die "unknown mode '$mode' (expected demo, test, bench, soak, example or selftest)" ;;
esac
filter=""
if [ $# -gt 0 ] && [ "$1" != "--" ]; then filter=$1; shift; fi
if [ $# -gt 0 ] && [ "$1" = "--" ]; then shift; fi
extra=("$@")
[ -n "${QEMU_DATA:-}" ] && extra=(-L "$QEMU_DATA" "${extra[@]}")
case "$filter" in *[[:space:]]*) die "a filter is one word, got '$filter'" ;; esac

# Prerequisites: cargo (rustup installs the pinned toolchain and target from
# rust-toolchain.toml), and QEMU.
command -v cargo >/dev/null || die "cargo not found: install rustup (https://rustup.rs), then rerun"
if command -v rustup >/dev/null && ! rustup target list --installed 2>/dev/null | grep -qx x86_64-unknown-none; then
    rustup target add x86_64-unknown-none >&2 || die "could not add the target: run 'rustup target add x86_64-unknown-none'"
fi
QEMU=${QEMU:-qemu-system-x86_64}
if ! command -v "$QEMU" >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "qemu-run: installing qemu-system-x86 with apt-get" >&2
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends qemu-system-x86; } >&2 \
            || die "apt-get could not install qemu-system-x86"
    else
        die "$QEMU not found: run 'sudo apt-get install qemu-system-x86' (Debian/Ubuntu)"
    fi
fi

# The kernel builds into its own target directory, so a `cargo test` that is
# running this script never waits on its own build lock. The test rig (the
# guest suite, the benchmarks, the crate's test hooks and access counts) is
# built only for the modes that run it, into a directory of its own; the
# demo, the examples and the soak run the kernel an embedder would build.
case "$mode" in
    test|selftest|bench) features=(--features rig); kernel_dir=target/kernel-rig ;;
    *) features=(); kernel_dir=target/kernel ;;
esac
cargo build --release --quiet -p dmaengine-boot --target x86_64-unknown-none --target-dir "$kernel_dir" \
    "${features[@]}" || die "kernel build failed"
kernel=$kernel_dir/x86_64-unknown-none/release/dmaengine-boot

accel=${ACCEL:-tcg}
case "$mode" in demo|selftest|example) default_timeout=120 ;; test) default_timeout=300 ;; soak) default_timeout=3600 ;; *) default_timeout=900 ;; esac
seed=${SEED:-$(od -An -N6 -tu8 /dev/urandom | tr -d ' ')}
case "$seed" in ''|*[!0-9]*) die "SEED must be a decimal number, got '$seed'" ;; esac
timeout_s=${TIMEOUT:-$default_timeout}

# q35 with an Intel VT-d unit (4-level second-level tables; interrupt
# remapping off), or IOMMU=off for the plain pc machine without one. Without
# q35's built-in SATA controller, which nothing here uses: with it, QEMU 10's
# SeaBIOS spends 32 s of every boot on it (0.3 s without; 7.2 is not slowed).
case "${IOMMU:-on}" in
    on) machine=(-machine q35,sata=off -device intel-iommu,intremap=off,aw-bits=48) ;;
    off) machine=(-machine pc) ;;
    *) die "IOMMU must be on or off, got '${IOMMU}'" ;;
esac
# The CPU model gets 1 GiB pages (pdpe1gb), which QEMU's default lacks.
# The edu device gets a 32-bit DMA mask (its default is 28 bits, which
# would silently truncate buffers above 256 MiB); boot/src/embed/dma.rs assumes it.
# Four CPUs unless SMP says otherwise (TCG runs each in its own thread;
# idle application processors halt).
smp=${SMP:-4}
mkdir -p target/qemu

# Boots the kernel with `$mode $1` on the command line and the QEMU
# arguments after it, logging to target/qemu; sets `log` and `rc` (0 on a
# pass, as the exit status below).
boot() {
    local filter=$1
    shift
    log=target/qemu/$mode${filter:+-$filter}.log
    timeout -k 5 "$timeout_s" "$QEMU" \
        "${machine[@]}" -cpu qemu64,+pdpe1gb -m 2G \
        -display none -monitor none -serial stdio -no-reboot -nic none -vga none \
        -device lsi53c895a -device lsi53c895a -device edu,dma_mask=0xffffffff \
        -device isa-debug-exit,iobase=0xf4,iosize=0x04 \
        -kernel "$kernel" -append "$mode $filter seed=$seed" \
        "$@" "${extra[@]}" | tee "$log"
    local status=${PIPESTATUS[0]}
    case "$status" in
        33) rc=0 ;;
        35) echo "qemu-run: the guest reported failures (log: $log)" >&2; rc=1 ;;
        37) if [ "$mode" = bench ]; then what=benchmark; else what=test; fi
            echo "qemu-run: no $what matches filter '$filter'" >&2; rc=2 ;;
        39) echo "qemu-run: the kernel rejected the command line '$mode $filter'" >&2; rc=2 ;;
        124|137) echo "qemu-run: timed out after ${timeout_s}s (TIMEOUT=seconds to change)" >&2; rc=1 ;;
        0) echo "qemu-run: QEMU exited with status 0: a triple fault or reset, never a pass" >&2; rc=1 ;;
        *) echo "qemu-run: QEMU exited with unexpected status $status" >&2; rc=1 ;;
    esac
}

# The benchmark group `insns` counts guest instructions: it needs a boot
# of its own, one CPU under TCG with -icount (RDTSC then reads the
# instructions executed; sleep=off jumps idle time to the next timer, so
# the counts do not depend on the host). An unfiltered bench boots twice.
logs=()
case "$mode:$filter" in
    bench:insns|bench:insns.*) normal=""; icount=$filter ;;
    bench:) normal=yes; icount=insns ;;
    *) normal=yes; icount="" ;;
esac
rc=0
if [ -n "$normal" ]; then
    boot "$filter" -accel "$accel" -smp "$smp"
    logs+=("$log")
fi
if [ -n "$icount" ] && [ "$rc" = 0 ]; then
    boot "$icount" -accel tcg -icount shift=0,sleep=off -smp 1
    logs+=("$log")
fi

if [ "$mode" = bench ] && [ "$rc" = 0 ]; then
    mkdir -p target/bench
    csv=target/bench/latest.csv
    # Written aside and moved over the last results only when there are
    # new ones: a run with none never replaces them.
    qemu_version=$("$QEMU" --version | sed -n '1s/.*version \([0-9][0-9.]*\).*/\1/p')
    { echo "key,value,unit"; echo "qemu.version,${qemu_version:-unknown},"
      awk '$1 == "BENCH" { printf "%s,%s,%s\n", $2, $3, $4 }' "${logs[@]}" | tr -d '\r'; } > "$csv.new"
    results=$(($(wc -l < "$csv.new") - 2))
    if [ "$results" -le 0 ]; then
        rm -f "$csv.new"
        echo "qemu-run: no benchmark results; $csv left as it was" >&2
        rc=1
    else
        mv "$csv.new" "$csv"
        echo
        awk -F, 'NR > 1 { printf "  %-44s %14s %s\n", $1, $2, $3 }' "$csv"
        echo "wrote $csv ($results results, QEMU ${qemu_version:-unknown})"
        cargo run --quiet --release -p dmaengine-bench-charts -- "$csv" target/bench \
            || { echo "qemu-run: drawing the charts failed" >&2; rc=1; }
    fi
fi
exit "$rc"
