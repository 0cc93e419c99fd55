#!/bin/sh
# /init of the Xen lane's dom0 initramfs (busybox). Brings up the toolstack (xenstored,
# xen-init-dom0, xenconsoled), then runs /usr/share/tessera/test.sh (XEN_DOM0_TEST) and powers off.
# Output goes to hvc0 -> Xen -> com1 -> qemu serial. Layout: /etc/tessera/dom0.env.
export PATH=/usr/local/bin:/usr/local/sbin:/bin:/sbin:/usr/bin:/usr/sbin:/usr/lib/xen-4.17/bin
export LD_LIBRARY_PATH=/lib/x86_64-linux-gnu:/usr/lib/x86_64-linux-gnu
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
mkdir -p /run/xen /run/xenstored /var/lib/xenstored /var/lib/xen /var/log/xen /run/lock /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
ip link set lo up # 127.0.0.1 for the shim part's unreachable-registry case
up() { cut -d' ' -f1 /proc/uptime; }
stage() { echo "=== STAGE $1 dom0-uptime=$(up)"; }
stage dom0-init-start
while read -r ko; do
  insmod "$ko" || echo "insmod $ko failed"
done < /lib/modules/load.list
mkdir -p /proc/xen && mount -t xenfs xenfs /proc/xen
stage modules-loaded
xenstored --pid-file /run/xenstored.pid
xen-init-dom0 || echo "xen-init-dom0 failed rc=$?"
xenconsoled --log=guest --log-dir=/var/log/xen --pid-file=/run/xenconsoled.pid
stage toolstack-up
xl list
# shellcheck source=/dev/null # written by e2e-xen.sh into the initramfs
. /etc/tessera/dom0.env
export TESSERA_GUEST_KERNEL TESSERA_GUEST_INITRD
stage test-start
sh /usr/share/tessera/test.sh
rc=$?
stage test-end
echo "XEN-DOM0-TEST rc=$rc"
xl list
echo XENLAB-FINISHED
sync
poweroff -f
