package main

import (
	"os"
	"runtime/debug"
	"testing"
)

// TestSameBuild: only a Go binary of the named main package from this very
// build counts; another package of the same build, a script and a missing
// file do not.
func TestSameBuild(t *testing.T) {
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		t.Skip("no build info")
	}
	if !sameBuild(self, bi.Path) {
		t.Errorf("sameBuild(this test binary, %s) = false", bi.Path)
	}
	if sameBuild(self, hostLocalMain) {
		t.Errorf("sameBuild(this test binary, %s) = true", hostLocalMain)
	}
	for _, p := range []string{"/bin/sh", "/nonexistent/host-local"} {
		if sameBuild(p, hostLocalMain) {
			t.Errorf("sameBuild(%s) = true", p)
		}
	}
}
