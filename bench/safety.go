package main

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"syscall"

	"github.com/plumbnet/plumb/internal/netns"
)

// counters are the parts of rule listings that traffic changes.
var counters = regexp.MustCompile(`\[\d+:\d+\]|packets \d+ bytes \d+|^#.*$`)

// snapshotRootNS reads, without changing anything, what the run must leave
// as it was in the machine's namespace: this run's named namespaces (other
// programs' come and go), the nftables ruleset and the iptables rules
// (counters blanked).
func snapshotRootNS() string {
	var b strings.Builder
	for _, c := range [][]string{{"ip", "netns", "list"}, {"nft", "list", "ruleset"}, {"iptables-save"}, {"ip6tables-save"}} {
		out, err := exec.Command(c[0], c[1:]...).CombinedOutput()
		fmt.Fprintf(&b, "== %s (err %v)\n", strings.Join(c, " "), err)
		for _, line := range strings.Split(string(out), "\n") {
			if c[0] == "ip" && !strings.HasPrefix(line, "pbench-") {
				continue
			}
			b.WriteString(counters.ReplaceAllString(line, ""))
			b.WriteByte('\n')
		}
	}
	return b.String()
}

// diffLines lists the lines only in a or only in b.
func diffLines(a, b string) string {
	in := func(s string) map[string]int {
		m := map[string]int{}
		for _, l := range strings.Split(s, "\n") {
			m[l]++
		}
		return m
	}
	ma, mb := in(a), in(b)
	var out []string
	for l, n := range ma {
		if mb[l] < n {
			out = append(out, "- "+l)
		}
	}
	for l, n := range mb {
		if ma[l] < n {
			out = append(out, "+ "+l)
		}
	}
	return strings.Join(out, "\n")
}

// sweep removes the named namespaces of run tag that are still there (the
// measuring side removes its own; this catches a crash). It returns how
// many it removed.
func sweep(tag string) int {
	entries, _ := os.ReadDir(netns.RunDir)
	n := 0
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), tag+"-") {
			if err := netns.RemoveNamed(e.Name()); err == nil {
				n++
			}
		}
	}
	return n
}

// sweepStale removes namespaces left by an earlier run whose process is gone.
func sweepStale() {
	entries, _ := os.ReadDir(netns.RunDir)
	for _, e := range entries {
		rest, ok := strings.CutPrefix(e.Name(), "pbench-")
		if !ok {
			continue
		}
		pidStr, _, _ := strings.Cut(rest, "-")
		pid, err := strconv.Atoi(pidStr)
		if err != nil {
			continue
		}
		if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
			if netns.RemoveNamed(e.Name()) == nil {
				fmt.Fprintf(os.Stderr, "bench: removed %s, left by an earlier run\n", e.Name())
			}
		}
	}
}
