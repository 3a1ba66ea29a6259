// Command bench measures plumb's plugin chain against the reference CNI
// plugins (containernetworking/plugins) the way container runtimes call
// them: through libcni, one process per plugin, with a conflist of bridge
// (isGateway, ipMasq) + host-local + portmap, for the iptables and the
// nftables backend.
//
// Run as root: `make bench` (or `go run ./bench`). It builds plumb's plugins
// and `go install`s the reference at a pinned version while the uplink is
// reachable, then re-executes itself in a fresh, unnamed network namespace
// and measures there. Every host namespace and container namespace it makes
// is a named netns it deletes; nothing is created in the machine's own
// network namespace, and the run checks that (netns list, nft ruleset,
// iptables rules before and after).
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// options are the flags.
type options struct {
	levels     []int
	workers    []int
	repeat     int
	parallel   int
	backends   []string
	quick      bool
	out        string
	portmap    string
	refVersion string
	floor      bool
	root       string
	strace     string
	show       string
}

// innerEnv is what the building side hands the measuring side.
type innerEnv struct {
	PlumbBin string `json:"plumb_bin"`
	RefBin   string `json:"ref_bin"`
	Portmap  bool   `json:"portmap"`
	Tag      string `json:"tag"`
	Out      string `json:"out"` // where the measuring side writes its Results
}

// envInner marks the re-executed measuring process; its value is the JSON
// of an innerEnv.
const envInner = "PLUMB_BENCH_INNER"

func main() {
	opts, err := parseFlags(os.Args[1:])
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(2)
	}
	if js := os.Getenv(envInner); js != "" {
		os.Exit(inner(opts, js))
	}
	if opts.show != "" {
		os.Exit(show(opts.show))
	}
	os.Exit(outer(opts))
}

func parseFlags(args []string) (options, error) {
	var o options
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	n := fs.String("n", "1,100,1000", "containers already attached when ADD/DEL are timed (comma-separated, ascending)")
	w := fs.String("workers", "8,32", "parallel worker counts")
	fs.IntVar(&o.repeat, "repeat", 30, "timed ADD+DEL pairs per N and implementation")
	fs.IntVar(&o.parallel, "parallel", 128, "containers started (then stopped) by each parallel run")
	b := fs.String("backends", "iptables,nftables", "firewall backends to measure")
	fs.BoolVar(&o.quick, "quick", false, "small run for trying it: -n 1,20 -repeat 5 -parallel 32 unless given")
	fs.StringVar(&o.out, "out", "bench/results", "directory for the results JSON")
	fs.StringVar(&o.portmap, "portmap", "auto", "put portmap in the chain: auto (when plumb's ./portmap builds), on, off")
	fs.StringVar(&o.refVersion, "ref", "v1.9.1", "containernetworking/plugins version to compare with")
	fs.BoolVar(&o.floor, "floor", true, "also time the kernel work alone (in-process netlink)")
	fs.StringVar(&o.root, "root", ".", "plumb's module root")
	fs.StringVar(&o.show, "show", "", "print the table of a stored results JSON (targets recomputed) and exit")
	fs.StringVar(&o.strace, "strace", "", "also run one untimed chain ADD+DEL per N under `strace -f -C -tt -T`, traces into this directory")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if o.quick {
		if !set["n"] {
			*n = "1,20"
		}
		if !set["repeat"] {
			o.repeat = 5
		}
		if !set["parallel"] {
			o.parallel = 32
		}
	}
	var err error
	if o.levels, err = ints(*n); err != nil {
		return o, fmt.Errorf("-n: %w", err)
	}
	if !slices.IsSorted(o.levels) || o.levels[0] < 0 {
		return o, errors.New("-n: want ascending counts >= 0")
	}
	if o.workers, err = ints(*w); err != nil {
		return o, fmt.Errorf("-workers: %w", err)
	}
	for _, x := range strings.Split(*b, ",") {
		if x != "iptables" && x != "nftables" {
			return o, fmt.Errorf("-backends: %q is not iptables or nftables", x)
		}
		o.backends = append(o.backends, x)
	}
	if o.strace != "" {
		if o.strace, err = filepath.Abs(o.strace); err != nil {
			return o, err
		}
		if err := os.MkdirAll(o.strace, 0o755); err != nil {
			return o, err
		}
	}
	if o.repeat < 1 || o.parallel < 1 {
		return o, errors.New("-repeat and -parallel must be >= 1")
	}
	switch o.portmap {
	case "auto", "on", "off":
	default:
		return o, fmt.Errorf("-portmap %q: want auto, on or off", o.portmap)
	}
	return o, nil
}

func ints(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		v, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	if len(out) == 0 {
		return nil, errors.New("empty list")
	}
	return out, nil
}

// outer runs in the machine's namespace: it builds, snapshots the
// namespace, runs the measuring side in a new one, checks nothing changed,
// then reports.
func outer(opts options) int {
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "bench: needs root (it makes network namespaces); run `sudo make bench`")
		return 1
	}
	start := time.Now()
	root, err := filepath.Abs(opts.root)
	if err == nil {
		_, err = os.Stat(filepath.Join(root, "go.mod"))
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench: run from plumb's module root or pass -root:", err)
		return 1
	}
	tmp, err := os.MkdirTemp("", "plumb-bench-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		return 1
	}
	defer os.RemoveAll(tmp)
	env := innerEnv{
		PlumbBin: filepath.Join(tmp, "plumb"),
		RefBin:   filepath.Join(tmp, "reference"),
		Tag:      fmt.Sprintf("pbench-%d", os.Getpid()),
		Out:      filepath.Join(tmp, "inner.json"),
	}
	sweepStale()
	var notes []string
	plumbCommit := commit(root)
	portmap, note, err := buildPlumb(root, env.PlumbBin, opts.portmap)
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		return 1
	}
	env.Portmap = portmap
	if note != "" {
		notes = append(notes, note)
		fmt.Fprintln(os.Stderr, "bench:", note)
	}
	if err := installRef(tmp, env.RefBin, opts.refVersion); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		return 1
	}

	before := snapshotRootNS()
	loadBefore := loadavg()
	code := runInner(env)
	loadAfter := loadavg()
	removed := sweep(env.Tag)
	after := snapshotRootNS()
	unchanged := before == after && removed == 0
	if !unchanged {
		fmt.Fprintln(os.Stderr, "bench: WARNING: the machine's namespace changed during the run:")
		fmt.Fprintln(os.Stderr, diffLines(before, after))
		if removed > 0 {
			fmt.Fprintf(os.Stderr, "bench: removed %d leftover namespaces named %s-*\n", removed, env.Tag)
		}
	}
	if code != 0 {
		return code
	}
	js, err := os.ReadFile(env.Out)
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench: no results:", err)
		return 1
	}
	var res Results
	if err := json.Unmarshal(js, &res); err != nil {
		fmt.Fprintln(os.Stderr, "bench: results:", err)
		return 1
	}
	host, _ := os.Hostname()
	now := time.Now().UTC()
	res.Date, res.Host, res.Machine = now.Format(time.RFC3339), host, machine()
	res.Plumb = plumbCommit
	res.Machine.Load = [2]string{loadBefore, loadAfter}
	res.Config = Config{Attached: opts.levels, Workers: opts.workers, Repeat: opts.repeat, Parallel: opts.parallel,
		Backends: opts.backends, RefVersion: opts.refVersion, Portmap: portmap, Quick: opts.quick}
	res.Chain = []string{"bridge (isGateway, ipMasq; host-local /16 as IPAM)"}
	if portmap {
		res.Chain = append(res.Chain, "portmap (1 published TCP port)")
	}
	res.Binaries = map[string]map[string]int64{implPlumb: sizes(env.PlumbBin), implRef: sizes(env.RefBin)}
	res.RootNSUnchanged = unchanged
	res.Notes = append(notes, res.Notes...)
	res.Targets = targets(&res)
	res.WallSeconds = time.Since(start).Seconds()

	name := now.Format("2006-01-02") + "-" + host
	if opts.quick {
		name += "-quick"
	}
	outDir := opts.out
	if !filepath.IsAbs(outDir) {
		outDir = filepath.Join(root, outDir)
	}
	path := filepath.Join(outDir, name+".json")
	if err := os.MkdirAll(outDir, 0o755); err == nil {
		js, _ = json.MarshalIndent(&res, "", "  ")
		err = os.WriteFile(path, append(js, '\n'), 0o644)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench: write results:", err)
		return 1
	}
	printTable(os.Stdout, &res)
	fmt.Printf("\nresults: %s\n", path)
	if !unchanged {
		return 1
	}
	return 0
}

// show prints a stored run.
func show(path string) int {
	js, err := os.ReadFile(path)
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		return 1
	}
	var res Results
	if err := json.Unmarshal(js, &res); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", path+":", err)
		return 1
	}
	res.Targets = targets(&res)
	printTable(os.Stdout, &res)
	return 0
}

// runInner re-executes this program in a fresh, unnamed network namespace
// that the kernel deletes when it exits, whatever way it exits.
func runInner(env innerEnv) int {
	self, err := os.Executable()
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		return 1
	}
	js, _ := json.Marshal(env)
	cmd := exec.Command(self, os.Args[1:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = nil, os.Stdout, os.Stderr
	cmd.Env = append(os.Environ(), envInner+"="+string(js))
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNET, Pdeathsig: syscall.SIGKILL}
	// ^C reaches both processes; the measuring one stops and cleans up,
	// this one waits for it and then sweeps.
	signal.Ignore(syscall.SIGINT, syscall.SIGTERM)
	defer signal.Reset(syscall.SIGINT, syscall.SIGTERM)
	if err := cmd.Run(); err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) && ee.ExitCode() > 0 {
			return ee.ExitCode()
		}
		fmt.Fprintln(os.Stderr, "bench: measuring process:", err)
		return 1
	}
	return 0
}

// inner is the measuring side, inside the throwaway namespace.
func inner(opts options, js string) int {
	var env innerEnv
	if err := json.Unmarshal([]byte(js), &env); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		return 1
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	res, err := innerRun(ctx, opts, env)
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		return 1
	}
	out, _ := json.Marshal(res)
	if err := os.WriteFile(env.Out, out, 0o600); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		return 1
	}
	return 0
}
