# desc: the floor with kernel forwarding: relay.c with -DSOCKMAP, bytes moved by BPF sockmap (root)
# The floor's two relays, each handing a connected pair to a BPF sk_skb verdict program, so
# the processes wake only to accept, connect and close: what a tunnel could get by leaving the
# bytes of plain connections to the kernel. Needs root (or CAP_BPF and CAP_NET_ADMIN).
FLOOR_CFLAGS=-DSOCKMAP
# shellcheck source=floor.sh
source "$(dirname "${BASH_SOURCE[0]}")/floor.sh"
