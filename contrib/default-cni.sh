#!/usr/bin/env bash
# Write podvisor's default pod network where a node has none, as CRI-O's
# packages do: one conflist with bridge + host-local + portmap, so the
# kubelet and crictl can run pods right after the install.
#
#   contrib/default-cni.sh [DIR]     DIR defaults to /etc/cni/net.d
#
# Does nothing when DIR already holds a config (.conflist, .conf, .json):
# an operator's or a network add-on's config always wins. The subnet is the
# first of a few candidates that no route of this host overlaps, so pods
# never shadow a network the node already reaches. Pods get a default route
# through the bridge and are masqueraded, as with CRI-O's default.
set -euo pipefail
dir=${1:-/etc/cni/net.d}
conf=$dir/10-podvisor-bridge.conflist

if compgen -G "$dir/*.conflist" >/dev/null || compgen -G "$dir/*.conf" >/dev/null \
        || compgen -G "$dir/*.json" >/dev/null; then
    echo "CNI: $dir already holds a network config; left as it is"
    exit 0
fi

subnet=$(ip -4 route show table all | python3 -c '
import ipaddress, sys
routes = []
for line in sys.stdin:
    words = line.split()
    first = words[1] if words and words[0] in ("local", "broadcast", "unicast") else (words or [""])[0]
    if first == "default":
        continue  # a default route overlaps everything; only specific ones count
    try:
        routes.append(ipaddress.ip_network(first, strict=False))
    except ValueError:
        pass
for candidate in ("10.85.0.0/16", "10.86.0.0/16", "10.87.0.0/16", "10.89.0.0/16",
                  "172.30.0.0/16", "192.168.230.0/24"):
    net = ipaddress.ip_network(candidate)
    if not any(net.overlaps(r) for r in routes):
        print(net)
        break
')
if [ -z "$subnet" ]; then
    echo "CNI: every candidate pod subnet overlaps a route of this host; write a config to $dir yourself" >&2
    exit 1
fi
gateway=$(python3 -c 'import ipaddress, sys; print(next(ipaddress.ip_network(sys.argv[1]).hosts()))' "$subnet")

mkdir -p "$dir"
tmp=$(mktemp "$dir/.podvisor-bridge.XXXXXX")
cat > "$tmp" <<CONF
{
  "cniVersion": "1.0.0",
  "name": "podvisor",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "podvisor0",
      "isGateway": true,
      "ipMasq": true,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "routes": [{ "dst": "0.0.0.0/0" }],
        "ranges": [[{ "subnet": "$subnet", "gateway": "$gateway" }]]
      }
    },
    {
      "type": "portmap",
      "capabilities": { "portMappings": true }
    }
  ]
}
CONF
chmod 0644 "$tmp"
mv "$tmp" "$conf"
echo "CNI: wrote $conf (bridge podvisor0, pods on $subnet)"
