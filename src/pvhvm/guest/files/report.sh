#!/bin/sh
# Print the pvhvm device report (the format is documented in pvhvm/guest/report.py).

hex4() { printf '0x%04x' "$(($1))"; }

driver_of() {  # driver_of SYSFS-DIR: the name of the driver bound to a device, or -
    if [ -e "$1/driver" ]; then basename "$(readlink -f "$1/driver")"; else echo -; fi
}

provider_driver() {  # the driver of the first virtio or PCI device at or above SYSFS-DIR
    dir="$(readlink -f "$1" 2>/dev/null)"
    while [ -n "$dir" ] && [ "$dir" != /sys/devices ] && [ "$dir" != / ]; do
        if [ -e "$dir/subsystem" ]; then
            case "$(basename "$(readlink -f "$dir/subsystem")")" in
                virtio|pci) driver_of "$dir"; return ;;
            esac
        fi
        dir="$(dirname "$dir")"
    done
    echo -
}

echo PVHVM-REPORT-BEGIN
for dev in /sys/bus/pci/devices/*; do
    [ -e "$dev/class" ] || continue
    class="$(cat "$dev/class")"
    echo "pci $(basename "$dev") class=$(hex4 $((class >> 8))) vendor=$(hex4 "$(cat "$dev/vendor")") device=$(hex4 "$(cat "$dev/device")") driver=$(driver_of "$dev")"
done
for blk in /sys/block/*; do
    name="$(basename "$blk")"
    case "$name" in loop*|ram*|zram*|dm-*|md*|nbd*) continue ;; esac
    echo "blk $name driver=$(provider_driver "$blk/device") size=$(cat "$blk/size")"
done
for net in /sys/class/net/*; do
    [ -e "$net/device" ] || continue
    echo "net $(basename "$net") driver=$(provider_driver "$net/device") mac=$(cat "$net/address")"
done
# The root device: match the device number of / against /sys/class/block/*/dev.
number="$(stat -c %d /)"
major=$(( (number >> 8) & 0xfff ))
minor=$(( (number & 0xff) | ((number >> 12) & 0xfff00) ))
root=-
for blk in /sys/class/block/*; do
    if [ "$(cat "$blk/dev")" = "$major:$minor" ]; then root="/dev/$(basename "$blk")"; break; fi
done
fstype=-
while read -r source mountpoint type rest; do
    [ "$mountpoint" = / ] && fstype="$type"
done < /proc/mounts
echo "root $root fstype=$fstype"
echo PVHVM-REPORT-END
