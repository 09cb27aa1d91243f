#!/usr/bin/env bash
# Builds the lab's Debian bookworm guest image: a raw ext4 root file system with Debian's stock
# kernel (which ships ip_vs*, dummy, ip_set*, xt_ipvs as modules), plus the kernel and initramfs
# extracted for QEMU's -kernel/-initrd boot.
#
# usage: build-image.sh MIRROR PUBKEY OUTDIR
# The recipe is this file: lab.py keys its image cache on this file's hash, so any change here
# rebuilds the image.
set -euo pipefail

mirror=$1 pubkey=$2 outdir=$3
suite=bookworm
image_size=3G
packages=(
  linux-image-amd64 initramfs-tools systemd systemd-sysv udev dbus
  openssh-server python3 python3-apt iproute2 kmod procps
  ipset ipvsadm iptables nftables conntrack curl
)

work=$(mktemp -d "${outdir}/build.XXXXXX")
rootfs=$work/rootfs
cleanup() {
  for m in dev/pts dev proc sys; do
    mountpoint -q "$rootfs/$m" 2>/dev/null && umount -l "$rootfs/$m"
  done
  rm -rf "$work"
}
trap cleanup EXIT

echo "lab: debootstrap $suite from the configured Debian archive" >&2
debootstrap --variant=minbase --include="$(IFS=,; echo "${packages[*]}")" \
  "$suite" "$rootfs" "$mirror" >"$work/debootstrap.log" 2>&1 || {
  tail -n 40 "$work/debootstrap.log" >&2
  [ -f "$rootfs/debootstrap/debootstrap.log" ] && tail -n 40 "$rootfs/debootstrap/debootstrap.log" >&2
  exit 1
}

echo "lab: configuring the guest" >&2
echo kubeipvs-lab >"$rootfs/etc/hostname"
printf '127.0.0.1 localhost\n127.0.1.1 kubeipvs-lab\n::1 localhost ip6-localhost ip6-loopback\n' >"$rootfs/etc/hosts"
printf '/dev/vda / ext4 rw,relatime 0 1\n' >"$rootfs/etc/fstab"
printf 'deb http://%s %s main\n' "${mirror#*://}" "$suite" >"$rootfs/etc/apt/sources.list"

# QEMU user-mode networking: the guest is always 10.0.2.15 behind the slirp gateway 10.0.2.2.
mkdir -p "$rootfs/etc/systemd/network"
cat >"$rootfs/etc/systemd/network/10-eth0.network" <<NET
[Match]
Name=eth0

[Network]
Address=10.0.2.15/24
Gateway=10.0.2.2
DNS=10.0.2.3
IPv6AcceptRA=no
LinkLocalAddressing=ipv6
NET
# The lab network between the nodes (a second NIC on a switch of the lab's own): node N is
# 192.168.200.N and fd00:200::N, its pods are 10.244.N.0/24 and fd00:10:244:N::/64 on bridge cbr0,
# and every node routes the other nodes' pod networks through them, as a host-gateway CNI would.
# The node's number comes from the kernel command line (kubeipvs.node=N), so one image serves all.
max_nodes=8
for n in $(seq 1 $max_nodes); do
  {
    printf '[Match]\nName=eth1\nKernelCommandLine=kubeipvs.node=%s\n\n' "$n"
    printf '[Network]\nAddress=192.168.200.%s/24\nAddress=fd00:200::%s/64\n' "$n" "$n"
    printf 'IPv6AcceptRA=no\nLinkLocalAddressing=ipv6\n'
    for m in $(seq 1 $max_nodes); do
      [ "$m" = "$n" ] && continue
      printf '\n[Route]\nDestination=10.244.%s.0/24\nGateway=192.168.200.%s\n' "$m" "$m"
      printf '\n[Route]\nDestination=fd00:10:244:%s::/64\nGateway=fd00:200::%s\n' "$m" "$m"
    done
  } >"$rootfs/etc/systemd/network/20-lab-eth1-node$n.network"
  printf '[Match]\nName=cbr0\nKernelCommandLine=kubeipvs.node=%s\n\n[Network]\nAddress=10.244.%s.1/24\nAddress=fd00:10:244:%s::1/64\nConfigureWithoutCarrier=yes\nLinkLocalAddressing=no\nIPv6AcceptRA=no\n' \
    "$n" "$n" "$n" >"$rootfs/etc/systemd/network/30-lab-cbr0-node$n.network"
done
# No multicast snooping: a pod's neighbour solicitation must reach it even if its group report was
# sent before the bridge forwarded.
printf '[NetDev]\nName=cbr0\nKind=bridge\n\n[Bridge]\nMulticastSnooping=no\n' >"$rootfs/etc/systemd/network/30-lab-cbr0.netdev"
rm -f "$rootfs/etc/resolv.conf"
printf 'nameserver 10.0.2.3\n' >"$rootfs/etc/resolv.conf"

mkdir -p "$rootfs/root/.ssh"
chmod 700 "$rootfs/root/.ssh"
install -m 600 "$pubkey" "$rootfs/root/.ssh/authorized_keys"
cat >"$rootfs/etc/ssh/sshd_config.d/lab.conf" <<SSHD
PermitRootLogin prohibit-password
PasswordAuthentication no
UseDNS no
MaxSessions 32
MaxStartups 32:30:64
SSHD

# Boot fast under emulation: networkd for the NIC, nothing periodic that competes with tests.
mkdir -p "$rootfs/etc/systemd/system/multi-user.target.wants"
ln -sf /lib/systemd/system/systemd-networkd.service \
  "$rootfs/etc/systemd/system/multi-user.target.wants/systemd-networkd.service"
for unit in apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer fstrim.timer \
  systemd-timesyncd.service; do
  ln -sf /dev/null "$rootfs/etc/systemd/system/$unit"
done
rm -f "$rootfs"/var/cache/apt/archives/*.deb

kernel=$(find "$rootfs/boot" -name 'vmlinuz-*' | sort -V | tail -n 1)
initrd=$(find "$rootfs/boot" -name 'initrd.img-*' | sort -V | tail -n 1)
cp "$kernel" "$work/vmlinuz"
cp "$initrd" "$work/initrd.img"
basename "$kernel" | sed 's/^vmlinuz-//' >"$work/kernel-release"

echo "lab: writing the ext4 image" >&2
truncate -s "$image_size" "$work/rootfs.img"
mkfs.ext4 -q -L root -d "$rootfs" "$work/rootfs.img"

mv "$work/vmlinuz" "$work/initrd.img" "$work/kernel-release" "$work/rootfs.img" "$outdir/"
