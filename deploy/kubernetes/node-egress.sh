#!/bin/sh
# Node egress through Gatehouse only (iptables and ip6tables; run as root on every node, at boot,
# before containerd / CRI-O / dockerd pull anything; running it again replaces its own rules).
# Host processes (kubelet, containerd, CRI-O, dockerd, hostNetwork pods) may reach loopback, the
# private networks below and Gatehouse; every other new outbound connection is rejected, so no
# registry on the internet answers a pull that Gatehouse refused. Forwarded pod traffic is not
# touched (NetworkPolicy governs it). Add what else your nodes need (NTP, OS updates, the cloud's
# metadata service) to PRIVATE / PRIVATE6 first.
set -eu
GATEHOUSE=${GATEHOUSE:-192.0.2.10}   # Gatehouse's IPv4 address
GATEHOUSE_PORT=${GATEHOUSE_PORT:-5000}
PRIVATE=${PRIVATE:-"10.0.0.0/8 172.16.0.0/12 192.168.0.0/16"}  # node, pod and service networks, DNS
PRIVATE6=${PRIVATE6:-"fe80::/10 fc00::/7"}                       # link-local, unique local

chain() { # chain IPTABLES DESTINATIONS...
  ipt=$1; shift
  $ipt -N GATEHOUSE-EGRESS 2>/dev/null || $ipt -F GATEHOUSE-EGRESS
  $ipt -A GATEHOUSE-EGRESS -o lo -j RETURN
  $ipt -A GATEHOUSE-EGRESS -m conntrack --ctstate ESTABLISHED,RELATED -j RETURN
  for net in "$@"; do
    $ipt -A GATEHOUSE-EGRESS -d "$net" -j RETURN
  done
}
chain iptables $PRIVATE
iptables -A GATEHOUSE-EGRESS -d "$GATEHOUSE" -p tcp --dport "$GATEHOUSE_PORT" -j RETURN
iptables -A GATEHOUSE-EGRESS -p tcp -j REJECT --reject-with tcp-reset
iptables -A GATEHOUSE-EGRESS -j REJECT --reject-with icmp-admin-prohibited
chain ip6tables $PRIVATE6
ip6tables -A GATEHOUSE-EGRESS -p tcp -j REJECT --reject-with tcp-reset
ip6tables -A GATEHOUSE-EGRESS -j REJECT --reject-with adm-prohibited
for ipt in iptables ip6tables; do
  $ipt -C OUTPUT -j GATEHOUSE-EGRESS 2>/dev/null || $ipt -I OUTPUT -j GATEHOUSE-EGRESS
done
