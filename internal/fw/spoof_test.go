package fw

import (
	"context"
	"errors"
	"net"
	"strings"
	"testing"
)

func TestSpoofRulesRejectBadInput(t *testing.T) {
	g := &NFTSpoof{LockPath: t.TempDir() + "/lock"}
	mac, _ := net.ParseMAC("02:00:00:00:00:01")
	for name, r := range map[string]SpoofRule{
		"no port":     {MAC: mac},
		"long port":   {Port: "a-very-long-port-name", MAC: mac},
		"space":       {Port: "veth 1", MAC: mac},
		"no mac":      {Port: "veth1"},
		"bad address": {Port: "veth1", MAC: mac, Addrs: []net.IP{{1, 2, 3}}},
	} {
		if err := g.AddSpoof(context.Background(), r); !errors.Is(err, ErrInvalidSpoof) {
			t.Errorf("%s: got %v, want ErrInvalidSpoof", name, err)
		}
	}
}

func TestNFTSpoofLifecycle(t *testing.T) {
	requireThrowawayNS(t)
	ctx := context.Background()
	g := &NFTSpoof{LockPath: t.TempDir() + "/lock"}
	mac, _ := net.ParseMAC("02:00:00:00:00:01")
	a := SpoofRule{Port: "vetha", MAC: mac, Addrs: []net.IP{net.ParseIP("10.0.0.2"), net.ParseIP("fd00::2")}}
	b := SpoofRule{Port: "vethb", MAC: mac, Addrs: []net.IP{net.ParseIP("10.0.0.3")}}
	for _, r := range []SpoofRule{a, a, b} { // ADD twice is idempotent
		if err := g.AddSpoof(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	rs, _ := command("nft", "list", "table", "bridge", spoofTable)
	for _, want := range []string{`"vetha" : jump s-vetha`, `ip saddr != { 10.0.0.2 } drop`, `ip6 saddr != { fd00::2 } drop`, `ether saddr != 02:00:00:00:00:01 drop`} {
		if !strings.Contains(rs, want) {
			t.Fatalf("ruleset lacks %q:\n%s", want, rs)
		}
	}
	if n := strings.Count(rs, "ip saddr != { 10.0.0.2 } drop"); n != 1 {
		t.Fatalf("rule present %d times after double ADD", n)
	}
	if err := g.CheckSpoof(ctx, a); err != nil {
		t.Fatalf("CHECK: %v", err)
	}
	other := a
	other.Addrs = []net.IP{net.ParseIP("10.0.0.9")}
	if err := g.CheckSpoof(ctx, other); !errors.Is(err, ErrSpoofMismatch) {
		t.Fatalf("CHECK with other addresses: %v", err)
	}
	if _, err := command("nft", "delete", "element", "bridge", spoofTable, spoofMap, `{ "vetha" }`); err != nil {
		t.Fatal(err)
	}
	if err := g.CheckSpoof(ctx, a); !errors.Is(err, ErrSpoofMismatch) {
		t.Fatalf("CHECK after the element was deleted by hand: %v", err)
	}
	for i := 0; i < 2; i++ { // the element is gone already; then everything is
		if err := g.DelSpoof(ctx, "vetha"); err != nil {
			t.Fatalf("DEL %d: %v", i, err)
		}
	}
	if err := g.GCSpoof(ctx, func(port string) bool { return false }); err != nil {
		t.Fatal(err)
	}
	rs, _ = command("nft", "list", "table", "bridge", spoofTable)
	if strings.Contains(rs, "s-veth") {
		t.Fatalf("chains left after DEL and GC:\n%s", rs)
	}
}
