package main

import (
	"fmt"
	"io"
	"slices"
	"strings"
)

// The targets.
const (
	goalAddRatio    = 0.2 // chain ADD p50 <= 1/5 of the reference's
	goalDelRatio    = 0.1 // chain DEL p50 <= 1/10
	goalFlat        = 1.3 // ADD p50 at the largest N <= 1.3x ADD p50 at the smallest
	goalParallelX   = 5.0 // throughput >= 5x the reference's
	goalParallelFor = 32  // ... with this many workers
)

// targets checks the run against the goals.
func targets(res *Results) []Target {
	var out []Target
	for _, br := range res.Backends {
		for _, lv := range br.Levels {
			for _, g := range []struct {
				verb  string
				m     map[string]Stats
				limit float64
				goal  string
			}{
				{"ADD", lv.ADD, goalAddRatio, "<= 1/5 of reference"},
				{"DEL", lv.DEL, goalDelRatio, "<= 1/10 of reference"},
			} {
				p, r := g.m[implPlumb], g.m[implRef]
				v := ratio(p.P50, r.P50)
				out = append(out, Target{
					Backend: br.Backend,
					What:    fmt.Sprintf("chain %s p50, %d attached", g.verb, lv.Attached),
					Goal:    g.goal,
					Got:     fmt.Sprintf("%.1f / %.1f ms = %.3f", p.P50, r.P50, v),
					Value:   v,
					Met:     v > 0 && v <= g.limit && p.Failures == 0,
				})
			}
		}
		if n := len(br.Levels); n > 1 {
			lo, hi := br.Levels[0], br.Levels[n-1]
			v := ratio(hi.ADD[implPlumb].P50, lo.ADD[implPlumb].P50)
			out = append(out, Target{
				Backend: br.Backend,
				What:    fmt.Sprintf("plumb ADD p50 %d attached vs %d", hi.Attached, lo.Attached),
				Goal:    "<= 1.3x",
				Got:     fmt.Sprintf("%.1f / %.1f ms = %.2fx", hi.ADD[implPlumb].P50, lo.ADD[implPlumb].P50, v),
				Value:   v,
				Met:     v > 0 && v <= goalFlat,
			})
		}
		for _, pr := range br.Parallel {
			p, r := pr.ByImpl[implPlumb], pr.ByImpl[implRef]
			// host-local's files must match the successful ADDs one to one.
			lost := 0
			if p.Reservations > 0 {
				lost = max(p.Reservations-(pr.Containers-p.ADDFailures), (pr.Containers-p.ADDFailures)-p.Reservations)
			}
			bad := p.ADDFailures + p.DELFailures + p.DupIPs + lost
			out = append(out, Target{
				Backend: br.Backend,
				What:    fmt.Sprintf("%d workers: plumb failures + duplicate IPs", pr.Workers),
				Goal:    "0",
				Got: fmt.Sprintf("%d ADD failed, %d DEL failed, %d duplicate IPs, %d reservations for %d ADDs",
					p.ADDFailures, p.DELFailures, p.DupIPs, p.Reservations, pr.Containers-p.ADDFailures),
				Value: float64(bad),
				Met:   bad == 0,
			})
			if pr.Workers == goalParallelFor {
				v := ratio(p.ADDPerSec, r.ADDPerSec)
				out = append(out, Target{
					Backend: br.Backend,
					What:    fmt.Sprintf("%d workers: ADD throughput vs reference", pr.Workers),
					Goal:    ">= 5x",
					Got:     fmt.Sprintf("%.1f / %.1f containers/s = %.1fx", p.ADDPerSec, r.ADDPerSec, v),
					Value:   v,
					Met:     v >= goalParallelX,
				})
			}
		}
		for _, bin := range sortedKeys(br.RSS[implPlumb]) {
			p, r := br.RSS[implPlumb][bin], br.RSS[implRef][bin]
			if r == 0 {
				continue
			}
			v := ratio(float64(p), float64(r))
			out = append(out, Target{
				Backend: br.Backend,
				What:    "peak RSS of " + bin,
				Goal:    "<= reference",
				Got:     fmt.Sprintf("%d / %d KiB = %.3f", p, r, v),
				Value:   v,
				Met:     p <= r,
			})
		}
	}
	return out
}

func mib(kib int64) float64 { return float64(kib) / 1024 }

func sortedKeys[V any](m map[string]V) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	slices.Sort(ks)
	return ks
}

// printTable writes the human-readable report.
func printTable(w io.Writer, res *Results) {
	pf := func(format string, args ...any) { fmt.Fprintf(w, format, args...) }
	m := res.Machine
	pf("plumb-bench %s on %s, plumb %s\n", res.Date, res.Host, res.Plumb)
	pf("machine: %s; %d x %s; %d MiB; %s; %s; %s; load %s -> %s\n", m.Kernel, m.CPUs, m.CPUModel, m.MemMiB, m.Go, m.Iptables, m.Nft, m.Load[0], m.Load[1])
	pf("chain: %s, through libcni (one process per plugin)\n", strings.Join(res.Chain, " + "))
	pf("reference: containernetworking/plugins %s; ratio = plumb / reference (lower is faster);\n", res.Config.RefVersion)
	pf("floor = the same kernel work done in one process through netlink; %d timed ADD+DEL per N; times in ms\n", res.Config.Repeat)
	impls := []string{implPlumb, implRef}
	hasFloor := false
	if len(res.Backends) > 0 && len(res.Backends[0].Levels) > 0 {
		if _, ok := res.Backends[0].Levels[0].ADD[implFloor]; ok {
			hasFloor = true
		}
	}
	for _, br := range res.Backends {
		pf("\n== backend %s ==\n", br.Backend)
		pf("%-10s %-6s %23s %23s %7s", "attached", "verb", "plumb p50/p90/p99", "reference p50/p90/p99", "ratio")
		if hasFloor {
			pf(" %7s", "floor")
		}
		pf(" %9s %9s\n", "plumb/s", "ref/s")
		for _, lv := range br.Levels {
			for _, v := range []struct {
				verb string
				m    map[string]Stats
			}{{"ADD", lv.ADD}, {"DEL", lv.DEL}} {
				p, r := v.m[implPlumb], v.m[implRef]
				pf("%-10d %-6s %23s %23s %7.3f", lv.Attached, v.verb, triple(p), triple(r), ratio(p.P50, r.P50))
				if hasFloor {
					pf(" %7.2f", v.m[implFloor].P50)
				}
				pf(" %9.1f %9.1f%s\n", p.PerSec, r.PerSec, failNote(p, r))
			}
		}
		if len(br.Growth[implPlumb]) > 1 {
			pf("ADD p50 while N attached (every ADD of the fill):\n%-10s", "N")
			for _, b := range br.Growth[implPlumb] {
				pf(" %8s", fmt.Sprintf("%d-%d", b.From, b.To-1))
			}
			pf("\n")
			rows := append([]string{}, impls...)
			if hasFloor {
				rows = append(rows, implFloor)
			}
			for _, name := range rows {
				pf("%-10s", name)
				for _, b := range br.Growth[name] {
					pf(" %8.2f", b.P50)
				}
				pf("\n")
			}
			pf("%-10s", "ratio")
			for i, b := range br.Growth[implPlumb] {
				if i < len(br.Growth[implRef]) {
					pf(" %8.3f", ratio(b.P50, br.Growth[implRef][i].P50))
				}
			}
			pf("\n")
		}
		fp, fr := br.Fill[implPlumb], br.Fill[implRef]
		pf("serial ADD over the whole fill: plumb %.1f containers/s, reference %.1f/s (%.1fx)", fp.PerSec, fr.PerSec, ratio(fp.PerSec, fr.PerSec))
		if hasFloor {
			pf(", floor %.0f/s", br.Fill[implFloor].PerSec)
		}
		pf("; duplicate IPs: plumb %d, reference %d\n", br.SerialDupIPs[implPlumb], br.SerialDupIPs[implRef])

		if len(br.Parallel) > 0 {
			pf("%-9s %-10s %9s %9s %8s %8s %6s %12s\n", "parallel", "", "ADD/s", "DEL/s", "ADD fail", "DEL fail", "dupIP", "ADD p50 ms")
			for _, pr := range br.Parallel {
				for i, name := range impls {
					x := pr.ByImpl[name]
					label := ""
					if i == 0 {
						label = fmt.Sprintf("%d x %d", pr.Workers, pr.Containers)
					}
					pf("%-9s %-10s %9.1f %9.1f %8d %8d %6d %12.1f\n", label, name, x.ADDPerSec, x.DELPerSec, x.ADDFailures, x.DELFailures, x.DupIPs, x.ADD.P50)
				}
				p, r := pr.ByImpl[implPlumb], pr.ByImpl[implRef]
				pf("%-9s %-10s %8.1fx %8.1fx", "", "plumb/ref", ratio(p.ADDPerSec, r.ADDPerSec), ratio(p.DELPerSec, r.DELPerSec))
				if f, ok := pr.ByImpl[implFloor]; ok {
					pf("   (floor %.0f ADD/s, %.0f DEL/s)", f.ADDPerSec, f.DELPerSec)
				}
				pf("\n")
			}
		}

		bins := sortedKeys(br.RSS[implRef])
		if len(bins) > 0 {
			pf("%-10s", "peak RSS")
			for _, b := range bins {
				pf(" %11s", b)
			}
			pf("   (MiB, the plugin process itself)\n")
			for _, name := range impls {
				pf("%-10s", name)
				for _, b := range bins {
					pf(" %11.1f", mib(br.RSS[name][b]))
				}
				pf("\n")
			}
			pf("%-10s", "ratio")
			for _, b := range bins {
				pf(" %11.2f", ratio(float64(br.RSS[implPlumb][b]), float64(br.RSS[implRef][b])))
			}
			pf("\n")
		}
		calls := sortedKeys(br.Calls[implRef])
		if len(calls) > 0 {
			pf("plugin process wall time p50, serial phase (ms):")
			for _, c := range calls {
				if strings.HasPrefix(c, "host-local") {
					continue // our direct probes, not the chain
				}
				pf("  %s %.1f vs %.1f", c, br.Calls[implPlumb][c].P50, br.Calls[implRef][c].P50)
			}
			pf("\n")
		}
	}

	pf("\nbinary size (MiB, stripped, CGO off)")
	for _, b := range sortedKeys(res.Binaries[implRef]) {
		p, r := res.Binaries[implPlumb][b], res.Binaries[implRef][b]
		if p == 0 {
			pf("  %s -/%.1f", b, float64(r)/(1<<20))
			continue
		}
		pf("  %s %.1f/%.1f", b, float64(p)/(1<<20), float64(r)/(1<<20))
	}
	pf("   (plumb/reference)\n")

	pf("\ntargets:\n")
	met := 0
	for _, t := range res.Targets {
		mark := "MISSED"
		if t.Met {
			mark = "met"
			met++
		}
		pf("  %-6s %-9s %-45s %-22s %s\n", mark, t.Backend, t.What, t.Goal, t.Got)
	}
	pf("  %d of %d met\n", met, len(res.Targets))
	for _, n := range res.Notes {
		pf("note: %s\n", n)
	}
	if res.RootNSUnchanged {
		pf("machine's own namespace: unchanged (netns list, nft ruleset, iptables rules)\n")
	} else {
		pf("machine's own namespace: CHANGED, see the log above\n")
	}
	pf("took %.0fs\n", res.WallSeconds)
}

func triple(s Stats) string {
	if s.Count == 0 {
		return "-"
	}
	return fmt.Sprintf("%.1f/%.1f/%.1f", s.P50, s.P90, s.P99)
}

func failNote(p, r Stats) string {
	if p.Failures == 0 && r.Failures == 0 {
		return ""
	}
	return fmt.Sprintf("  (failed: plumb %d, reference %d)", p.Failures, r.Failures)
}
