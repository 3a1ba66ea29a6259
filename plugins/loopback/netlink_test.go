package main

import (
	"testing"

	"github.com/plumbnet/plumb/internal/testns"
)

func TestMain(m *testing.M) { testns.MainInHostNS(m) }

// TestRealNamespace runs the plugin logic against a real namespace.
func TestRealNamespace(t *testing.T) {
	c := testns.NewNS(t)
	p := &Plugin{Open: openLoopback}
	args := cmdArgs(c.Path(), conf100)
	if err := p.Check(args); err == nil {
		t.Fatal("CHECK passed before ADD on a fresh namespace whose lo is down")
	}
	if _, err := p.Add(args); err != nil {
		t.Fatal(err)
	}
	if err := p.Check(args); err != nil {
		t.Fatalf("CHECK after ADD: %v", err)
	}
	if err := p.Del(args); err != nil {
		t.Fatal(err)
	}
	if err := p.Check(args); err == nil {
		t.Fatal("CHECK passed after DEL")
	}
}
