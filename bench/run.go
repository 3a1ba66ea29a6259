package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/plumbnet/plumb/internal/netns"
)

// runner measures every implementation inside the throwaway namespace.
// Each implementation gets, per phase, a fresh host namespace of its own
// (so one's bridge, veths and firewall rules never slow down another's
// calls) and a pool of container namespaces made once, before any timing.
type runner struct {
	opts  options
	tag   string // prefix of every namespace name this run makes
	impls []impl
	pools map[string][]string // impl -> container namespace paths
	phase int
	log   func(format string, args ...any)
}

// rotate returns the implementations starting at k mod len, so that over a
// run each goes first, middle and last equally often and drift on a noisy
// machine hits all alike.
func (r *runner) rotate(k int) []impl {
	n := len(r.impls)
	out := make([]impl, 0, n)
	for i := range n {
		out = append(out, r.impls[(k+i)%n])
	}
	return out
}

func (r *runner) ctr(im impl, slot int, extra ...any) container {
	return container{
		Path:     r.pools[im.Name()][slot],
		ID:       containerID(append([]any{r.tag, r.phase, im.Name(), slot}, extra...)...),
		HostPort: 20000 + slot,
	}
}

// createPools makes n container namespaces per implementation.
func (r *runner) createPools(n int) error {
	r.pools = map[string][]string{}
	start := time.Now()
	for _, im := range r.impls {
		for i := range n {
			name := fmt.Sprintf("%s-%s-c%d", r.tag, im.Name(), i)
			ns, err := netns.CreateNamed(name)
			if err != nil {
				return err
			}
			r.pools[im.Name()] = append(r.pools[im.Name()], ns.Path())
			ns.Close()
		}
	}
	r.log("made %d container namespaces in %.1fs", n*len(r.impls), time.Since(start).Seconds())
	return nil
}

func (r *runner) removePools() {
	for _, paths := range r.pools {
		for _, p := range paths {
			if err := netns.RemoveNamed(filepath.Base(p)); err != nil {
				r.log("%v", err)
			}
		}
	}
}

// phaseHosts is one phase's host namespaces, set up for every impl.
type phaseHosts struct {
	r        *runner
	hosts    []*hostNS
	attached map[string]map[string]bool // impl -> container paths with an attachment
	mu       sync.Mutex
}

func (r *runner) newPhase(backend string) (*phaseHosts, error) {
	r.phase++
	p := &phaseHosts{r: r, attached: map[string]map[string]bool{}}
	for _, im := range r.impls {
		h, err := newHostNS(fmt.Sprintf("%s-h%d-%s", r.tag, r.phase, im.Name()))
		if err != nil {
			p.close()
			return nil, err
		}
		p.hosts = append(p.hosts, h)
		p.attached[im.Name()] = map[string]bool{}
		if err := im.Setup(h.ns, backend); err != nil {
			p.close()
			return nil, fmt.Errorf("%s setup: %w", im.Name(), err)
		}
	}
	return p, nil
}

func (p *phaseHosts) mark(im impl, path string, on bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if on {
		p.attached[im.Name()][path] = true
	} else {
		delete(p.attached[im.Name()], path)
	}
}

// finish collects what each impl recorded and tears the phase down: the
// host namespaces go, and with them every bridge, veth and rule the phase
// made; then it waits for the kernel to finish.
func (p *phaseHosts) finish(br *BackendResult, keepCalls bool) {
	for i, im := range p.r.impls {
		if i >= len(p.hosts) {
			break
		}
		rss, calls := im.Finish()
		if br.RSS[im.Name()] == nil {
			br.RSS[im.Name()] = RSSMap{}
		}
		for k, v := range rss {
			br.RSS[im.Name()][k] = max(br.RSS[im.Name()][k], v)
		}
		if keepCalls && calls != nil {
			br.Calls[im.Name()] = calls
		}
	}
	p.close()
}

func (p *phaseHosts) close() {
	for _, h := range p.hosts {
		if err := h.remove(); err != nil {
			p.r.log("%v", err)
		}
	}
	p.hosts = nil
	var paths []string
	for _, m := range p.attached {
		for path := range m {
			paths = append(paths, path)
		}
	}
	if err := waitDetached(paths, 2*time.Minute); err != nil {
		p.r.log("teardown: %v", err)
	}
}

// firstErrs keeps the first error per implementation.
type firstErrs struct {
	mu sync.Mutex
	m  map[string]string
}

func (f *firstErrs) add(im impl, verb string, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.m == nil {
		f.m = map[string]string{}
	}
	if _, ok := f.m[im.Name()]; !ok {
		f.m[im.Name()] = verb + ": " + oneLine(err.Error())
	}
}

func oneLine(s string) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > 300 {
		s = s[:300] + "..."
	}
	return s
}

func callCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, 2*time.Minute)
}

// serial attaches containers one at a time up to the largest N, timing
// every ADD (the growth curve), and at each N runs Repeat probe
// containers through ADD then DEL, alternating the implementations.
func (r *runner) serial(ctx context.Context, backend string, br *BackendResult) error {
	p, err := r.newPhase(backend)
	if err != nil {
		return err
	}
	defer p.finish(br, true)
	type sample struct {
		attached int
		d        time.Duration
	}
	fill := map[string][]sample{}
	fillFail := map[string]int{}
	ips := map[string]map[string]int{}
	var errs firstErrs
	for _, im := range r.impls {
		ips[im.Name()] = map[string]int{}
	}
	levels := r.opts.levels
	maxN := levels[len(levels)-1]
	attached, probe := 0, maxN
	for _, lvl := range levels {
		for attached < lvl {
			if err := ctx.Err(); err != nil {
				return err
			}
			for _, im := range r.rotate(attached) {
				c := r.ctr(im, attached)
				cctx, cancel := callCtx(ctx)
				t0 := time.Now()
				ip, err := im.Add(cctx, c)
				d := time.Since(t0)
				cancel()
				if err != nil {
					fillFail[im.Name()]++
					errs.add(im, "ADD", err)
					continue
				}
				p.mark(im, c.Path, true)
				fill[im.Name()] = append(fill[im.Name()], sample{attached, d})
				ips[im.Name()][ip.String()]++
			}
			attached++
			if attached%100 == 0 || attached == lvl {
				var parts []string
				for _, im := range r.impls {
					s := fill[im.Name()]
					if len(s) > 0 {
						parts = append(parts, fmt.Sprintf("%s %.1fms", im.Name(), float64(s[len(s)-1].d)/1e6))
					}
				}
				r.log("[%s] attached %d/%d; last ADD: %s", backend, attached, maxN, strings.Join(parts, ", "))
			}
		}
		lr := LevelResult{Attached: lvl, ADD: map[string]Stats{}, DEL: map[string]Stats{}}
		addD, delD := map[string][]time.Duration{}, map[string][]time.Duration{}
		addF, delF := map[string]int{}, map[string]int{}
		for k := range r.opts.repeat {
			if err := ctx.Err(); err != nil {
				return err
			}
			for _, im := range r.rotate(k) {
				c := r.ctr(im, probe)
				cctx, cancel := callCtx(ctx)
				t0 := time.Now()
				_, addErr := im.Add(cctx, c)
				d := time.Since(t0)
				cancel()
				if addErr != nil {
					addF[im.Name()]++
					errs.add(im, "probe ADD", addErr)
				} else {
					addD[im.Name()] = append(addD[im.Name()], d)
					p.mark(im, c.Path, true)
				}
				// DEL even after a failed ADD (it cleans up), timed only
				// after a successful one.
				cctx, cancel = callCtx(ctx)
				t0 = time.Now()
				err := im.Del(cctx, c)
				d = time.Since(t0)
				cancel()
				switch {
				case err != nil:
					delF[im.Name()]++
					errs.add(im, "probe DEL", err)
				case addErr == nil:
					delD[im.Name()] = append(delD[im.Name()], d)
					p.mark(im, c.Path, false)
				}
			}
			probe++
		}
		for _, im := range r.impls {
			lr.ADD[im.Name()] = summarize(addD[im.Name()], addF[im.Name()])
			lr.DEL[im.Name()] = summarize(delD[im.Name()], delF[im.Name()])
		}
		br.Levels = append(br.Levels, lr)
		var parts []string
		for _, im := range r.impls {
			parts = append(parts, fmt.Sprintf("%s ADD %.1f DEL %.1f", im.Name(), lr.ADD[im.Name()].P50, lr.DEL[im.Name()].P50))
		}
		r.log("[%s] %d attached, p50 ms: %s", backend, lvl, strings.Join(parts, "; "))
		// Untimed: the RSS pass, and the strace pass when asked for.
		for k := range 3 {
			for _, im := range r.rotate(k) {
				if err := im.Probe(ctx, r.ctr(im, probe-1, "rss", k)); err != nil {
					errs.add(im, "RSS pass", err)
				}
			}
		}
		if r.opts.strace != "" {
			for _, im := range r.impls {
				if t, ok := im.(interface {
					Trace(context.Context, container, string, string) error
				}); ok {
					prefix := fmt.Sprintf("%s-%s-%d", backend, im.Name(), lvl)
					if err := t.Trace(ctx, r.ctr(im, probe-1, "strace"), r.opts.strace, prefix); err != nil {
						errs.add(im, "strace pass", err)
					}
				}
			}
		}
	}

	br.Fill, br.Growth, br.SerialDupIPs = map[string]Stats{}, map[string][]Bucket{}, map[string]int{}
	for _, im := range r.impls {
		var all []time.Duration
		buckets := map[int][]time.Duration{}
		for _, s := range fill[im.Name()] {
			all = append(all, s.d)
			buckets[s.attached/100] = append(buckets[s.attached/100], s.d)
		}
		br.Fill[im.Name()] = summarize(all, fillFail[im.Name()])
		for b := 0; b*100 < maxN; b++ {
			st := summarize(buckets[b], 0)
			br.Growth[im.Name()] = append(br.Growth[im.Name()], Bucket{From: b * 100, To: min((b+1)*100, maxN), Count: st.Count, P50: st.P50})
		}
		br.SerialDupIPs[im.Name()] = dups(ips[im.Name()])
		if rs, ok := im.(reserver); ok {
			if br.Reservations == nil {
				br.Reservations = map[string]int{}
			}
			br.Reservations[im.Name()] = rs.Reservations()
		}
	}
	for name, e := range errs.m {
		br.note(fmt.Sprintf("%s %s serial: first error: %s", name, backend, e))
	}
	return nil
}

// dups counts addresses handed out more than once.
func dups(ips map[string]int) int {
	n := 0
	for _, c := range ips {
		if c > 1 {
			n += c - 1
		}
	}
	return n
}

// parallel starts m containers with w concurrent callers, then stops them
// the same way; each implementation runs its burst in turn.
func (r *runner) parallel(ctx context.Context, backend string, w, m, order int, br *BackendResult) error {
	p, err := r.newPhase(backend)
	if err != nil {
		return err
	}
	defer p.finish(br, false)
	pr := ParallelResult{Workers: w, Containers: m, ByImpl: map[string]ParallelImpl{}}
	var errs firstErrs
	for _, im := range r.rotate(order) {
		res := pr.ByImpl[im.Name()]
		ips := map[string]int{}
		var mu sync.Mutex
		took, fails, wall := burst(ctx, w, m, func(ctx context.Context, slot int) error {
			c := r.ctr(im, slot)
			ip, err := im.Add(ctx, c)
			if err != nil {
				errs.add(im, "ADD", err)
				return err
			}
			p.mark(im, c.Path, true)
			mu.Lock()
			ips[ip.String()]++
			mu.Unlock()
			return nil
		})
		res.ADD, res.ADDFailures, res.DupIPs = summarize(took, fails), fails, dups(ips)
		res.ADDPerSec = float64(m-fails) / wall.Seconds()
		if rs, ok := im.(reserver); ok {
			res.Reservations = rs.Reservations()
		}
		pr.ByImpl[im.Name()] = res
	}
	for _, im := range r.rotate(order + 1) {
		res := pr.ByImpl[im.Name()]
		took, fails, wall := burst(ctx, w, m, func(ctx context.Context, slot int) error {
			c := r.ctr(im, slot)
			if err := im.Del(ctx, c); err != nil {
				errs.add(im, "DEL", err)
				return err
			}
			p.mark(im, c.Path, false)
			return nil
		})
		res.DEL, res.DELFailures = summarize(took, fails), fails
		res.DELPerSec = float64(m-fails) / wall.Seconds()
		res.FirstError = errs.m[im.Name()]
		pr.ByImpl[im.Name()] = res
	}
	var parts []string
	for _, im := range r.impls {
		x := pr.ByImpl[im.Name()]
		parts = append(parts, fmt.Sprintf("%s ADD %.1f/s (%d failed, %d dup) DEL %.1f/s (%d failed)",
			im.Name(), x.ADDPerSec, x.ADDFailures, x.DupIPs, x.DELPerSec, x.DELFailures))
	}
	r.log("[%s] %d workers x %d containers: %s", backend, w, m, strings.Join(parts, "; "))
	br.Parallel = append(br.Parallel, pr)
	return ctx.Err()
}

// burst runs fn for slots 0..m-1 with w workers released together and
// returns the successful calls' latencies, the failure count and the wall
// time from release to the last call's end.
func burst(ctx context.Context, w, m int, fn func(context.Context, int) error) ([]time.Duration, int, time.Duration) {
	jobs := make(chan int, m)
	for i := range m {
		jobs <- i
	}
	close(jobs)
	var (
		mu    sync.Mutex
		took  []time.Duration
		fails int
		wg    sync.WaitGroup
	)
	release := make(chan struct{})
	for range w {
		wg.Go(func() {
			<-release
			for slot := range jobs {
				if ctx.Err() != nil {
					mu.Lock()
					fails++
					mu.Unlock()
					continue
				}
				cctx, cancel := callCtx(ctx)
				t0 := time.Now()
				err := fn(cctx, slot)
				d := time.Since(t0)
				cancel()
				mu.Lock()
				if err != nil {
					fails++
				} else {
					took = append(took, d)
				}
				mu.Unlock()
			}
		})
	}
	start := time.Now()
	close(release)
	wg.Wait()
	return took, fails, time.Since(start)
}

// innerRun is the measuring side, in the throwaway namespace.
func innerRun(ctx context.Context, opts options, env innerEnv) (*Results, error) {
	log := func(format string, args ...any) {
		fmt.Fprintf(os.Stderr, "bench: "+format+"\n", args...)
	}
	if err := loopbackUp(); err != nil {
		return nil, err
	}
	r := &runner{opts: opts, tag: env.Tag, log: log}
	timeBin := gnuTime()
	r.impls = []impl{
		&cniImpl{name: implPlumb, binDir: env.PlumbBin, bridge: "pbplumb0", subnet: "10.201.0.0/16", portmap: env.Portmap, timeBin: timeBin},
		&cniImpl{name: implRef, binDir: env.RefBin, bridge: "pbref0", subnet: "10.202.0.0/16", portmap: env.Portmap, timeBin: timeBin},
	}
	if opts.floor {
		r.impls = append(r.impls, newFloor("pbfloor0", "10.203.0.0/16"))
	}
	maxN := opts.levels[len(opts.levels)-1]
	poolSize := max(maxN+len(opts.levels)*opts.repeat, opts.parallel)
	defer r.removePools()
	if err := r.createPools(poolSize); err != nil {
		return nil, err
	}
	res := &Results{}
	if timeBin == "" {
		res.Notes = append(res.Notes, "peak RSS not measured: GNU time is not installed (apt-get install time)")
	}
	for i, backend := range opts.backends {
		br := BackendResult{Backend: backend, RSS: map[string]RSSMap{}, Calls: map[string]CallMap{}}
		t0 := time.Now()
		if err := r.serial(ctx, backend, &br); err != nil {
			return nil, fmt.Errorf("%s serial: %w", backend, err)
		}
		log("[%s] serial phase took %.0fs", backend, time.Since(t0).Seconds())
		for j, w := range opts.workers {
			t0 := time.Now()
			if err := r.parallel(ctx, backend, w, opts.parallel, i+j, &br); err != nil {
				return nil, fmt.Errorf("%s parallel %d: %w", backend, w, err)
			}
			log("[%s] parallel %d took %.0fs", backend, w, time.Since(t0).Seconds())
		}
		res.Notes = append(res.Notes, br.notes...)
		br.notes = nil
		res.Backends = append(res.Backends, br)
	}
	return res, nil
}

func loopbackUp() error {
	n, err := netns.Current()
	if err != nil {
		return err
	}
	defer n.Close()
	h, err := n.Netlink()
	if err != nil {
		return err
	}
	defer h.Close()
	lo, err := h.LinkByName("lo")
	if err != nil {
		return err
	}
	return h.LinkSetUp(lo)
}
