#!/bin/sh
# What testnet/netlab needs from Debian: iproute2 (ip netns) and nftables (the
# NAT routers). Installed when missing; the lab's test runs this itself.
set -e
command -v ip >/dev/null 2>&1 || need="$need iproute2"
command -v nft >/dev/null 2>&1 || need="$need nftables"
[ -z "$need" ] && exit 0
apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $need >/dev/null
