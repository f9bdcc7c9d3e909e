#!/bin/bash
# Capture a real block trace: ext4 on a 64 MiB loop device, via tracefs
# events/block/block_rq_issue (blktrace itself is blocked by lockdown here).
# Workload: mkfs.ext4, mount, write 40 files (4 KiB .. 1 MiB), a 4 MiB file,
# rewrite part of it, delete 10 files, fstrim, umount.
# Output: tests/data/ext4-loop.block_rq_issue.txt(.gz) (only the loop device's lines).
# Cleans up the mount, the loop device and the tracing state it made, by their own ids.
# Needs root; exits 0 with a message when tracefs or loop devices are refused.
set -u
OUT=${1:-$(dirname "$0")/../tests/data/ext4-loop.block_rq_issue.txt}
WORK=$(mktemp -d /tmp/thinp-capture.XXXXXX)
TFS=/sys/kernel/tracing
MOUNTED_TFS=""
LOOP=""
MNT="$WORK/mnt"
INST=""
cleanup() {
    mountpoint -q "$MNT" 2>/dev/null && umount "$MNT"
    [ -n "$LOOP" ] && losetup -d "$LOOP" 2>/dev/null
    if [ -n "$INST" ] && [ -d "$INST" ]; then
        echo 0 > "$INST/events/block/block_rq_issue/enable" 2>/dev/null
        rmdir "$INST" 2>/dev/null
    fi
    [ -n "$MOUNTED_TFS" ] && umount "$MOUNTED_TFS" 2>/dev/null
    rm -rf "$WORK"
}
trap cleanup EXIT
skip() { echo "capture_block_trace: skipped: $*" >&2; exit 0; }

if [ ! -e "$TFS/events/block/block_rq_issue" ]; then
    TFS="$WORK/tracefs"; mkdir -p "$TFS"
    mount -t tracefs nodev "$TFS" 2>/dev/null || skip "cannot mount tracefs"
    MOUNTED_TFS="$TFS"
fi
[ -e "$TFS/events/block/block_rq_issue" ] || skip "no block_rq_issue event"
# a private trace instance, so the global tracing state is never touched
INST="$TFS/instances/thinp-capture-$$"
mkdir "$INST" 2>/dev/null || skip "cannot create a trace instance"

truncate -s 64M "$WORK/disk.img"
LOOP=$(losetup --find --show "$WORK/disk.img") || skip "no loop device"
MAJMIN=$(printf '%d,%d' $((0x$(stat -c %t "$LOOP"))) $((0x$(stat -c %T "$LOOP"))))
echo > "$INST/trace"
echo 1 > "$INST/events/block/block_rq_issue/enable" || skip "cannot enable block_rq_issue"

mkfs.ext4 -q -F -E nodiscard "$LOOP"
mkdir -p "$MNT"
mount -t ext4 "$LOOP" "$MNT"
for i in $(seq 0 39); do
    head -c $(( (4096 << (i % 9)) )) /dev/urandom > "$MNT/f$i"
done
head -c 4M /dev/urandom > "$MNT/big"
sync
dd if=/dev/urandom of="$MNT/big" bs=4k seek=100 count=64 conv=notrunc status=none
sync
cat "$MNT/f3" > /dev/null
rm -f "$MNT"/f1[0-9]
sync
fstrim "$MNT" 2>/dev/null || true
umount "$MNT"
echo 0 > "$INST/events/block/block_rq_issue/enable"
mkdir -p "$(dirname "$OUT")"
{
    echo "# ext4 on loop device $MAJMIN (64 MiB), captured $(date -u +%FT%TZ) on $(uname -r)"
    echo "# by scripts/capture_block_trace.sh from tracefs events/block/block_rq_issue"
    grep "block_rq_issue: $MAJMIN " "$INST/trace"
} > "$OUT"
gzip -9nf "$OUT"
echo "$OUT.gz: $(zcat "$OUT.gz" | grep -c block_rq_issue) requests on $MAJMIN"
