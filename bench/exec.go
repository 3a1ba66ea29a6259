package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/plumbnet/plumb/internal/netns"
)

// recExec is libcni's plugin runner with two additions: each plugin process
// starts inside the implementation's host namespace, and either its wall
// time (timed calls) or its peak RSS (the untimed RSS pass) is recorded per
// binary.
//
// Peak RSS cannot come from our own wait4: Go starts children with
// CLONE_VM|CLONE_VFORK, and at exec the kernel folds the high-water mark of
// the mm the child shared with us into its ru_maxrss, so every plugin would
// report this driver's RSS. The RSS pass therefore runs each plugin under
// GNU time, a small C program that forks (with its own tiny mm) and reports
// the plugin's %M. Plugins the plugin itself runs (iptables, nft) are not in
// its figure.
type recExec struct {
	version.PluginDecoder
	host *netns.NS
	// wrap is GNU time's path for the RSS pass, "" for timed calls.
	wrap string
	tmp  string
	// traceTo, when set, runs each plugin under strace writing to
	// traceTo/<prefix>-<binary>-<VERB>.txt instead.
	traceTo, prefix string

	mu   sync.Mutex
	rss  map[string]int64           // binary -> peak KiB
	took map[string][]time.Duration // "binary VERB" -> successful calls
	fail map[string]int
}

var _ invoke.Exec = (*recExec)(nil)

func newRecExec(host *netns.NS) *recExec {
	return &recExec{host: host, rss: map[string]int64{}, took: map[string][]time.Duration{}, fail: map[string]int{}}
}

// rssExec is the runner of the RSS pass.
func (e *recExec) rssExec(timeBin, tmp string) *recExec {
	r := newRecExec(e.host)
	r.wrap, r.tmp = timeBin, tmp
	return r
}

// traceExec is the runner of the strace pass.
func (e *recExec) traceExec(dir, prefix string) *recExec {
	r := newRecExec(e.host)
	r.traceTo, r.prefix = dir, prefix
	return r
}

// gnuTime is GNU time's path, or "" when it is not installed.
func gnuTime() string {
	for _, p := range []string{"/usr/bin/time", "/bin/time"} {
		if out, err := exec.Command(p, "--version").CombinedOutput(); err == nil && bytes.Contains(out, []byte("GNU")) {
			return p
		}
	}
	return ""
}

func (e *recExec) ExecPlugin(ctx context.Context, path string, stdin []byte, environ []string) ([]byte, error) {
	if e.wrap != "" {
		return e.execRSS(ctx, path, stdin, environ)
	}
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, path)
	if e.traceTo != "" {
		out := filepath.Join(e.traceTo, fmt.Sprintf("%s-%s-%s.txt", e.prefix, filepath.Base(path), cniCommand(environ)))
		cmd = exec.CommandContext(ctx, "strace", "-f", "-C", "-tt", "-T", "-o", out, path)
	}
	cmd.Env = environ
	cmd.Stdin = bytes.NewReader(stdin)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	// Forked from a thread inside the host namespace, the plugin lives there.
	err := e.host.Do(cmd.Start)
	if err == nil {
		err = cmd.Wait()
	}
	e.record(filepath.Base(path), cniCommand(environ), time.Since(start), err)
	if err != nil {
		return nil, pluginErr(err, stdout.Bytes(), stderr.Bytes())
	}
	return stdout.Bytes(), nil
}

// execRSS runs the plugin under GNU time and records its peak RSS.
func (e *recExec) execRSS(ctx context.Context, path string, stdin []byte, environ []string) ([]byte, error) {
	f, err := os.CreateTemp(e.tmp, "rss-")
	if err != nil {
		return nil, err
	}
	f.Close()
	defer os.Remove(f.Name())
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, e.wrap, "-f", "%M", "-o", f.Name(), path)
	cmd.Env = environ
	cmd.Stdin = bytes.NewReader(stdin)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err = e.host.Do(cmd.Start)
	if err == nil {
		err = cmd.Wait()
	}
	if out, rerr := os.ReadFile(f.Name()); rerr == nil {
		// "%M\n", after "Command exited with non-zero status N\n" on failure.
		fields := strings.Fields(string(out))
		var kib int64
		if len(fields) > 0 {
			if _, serr := fmt.Sscan(fields[len(fields)-1], &kib); serr == nil {
				e.mu.Lock()
				bin := filepath.Base(path)
				e.rss[bin] = max(e.rss[bin], kib)
				e.mu.Unlock()
			}
		}
	}
	if err != nil {
		return nil, pluginErr(err, stdout.Bytes(), stderr.Bytes())
	}
	return stdout.Bytes(), nil
}

func (e *recExec) FindInPath(plugin string, paths []string) (string, error) {
	return invoke.FindInPath(plugin, paths)
}

func (e *recExec) record(bin, verb string, took time.Duration, err error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	key := bin + " " + verb
	if err != nil {
		e.fail[key]++
	} else {
		e.took[key] = append(e.took[key], took)
	}
}

// snapshot returns the peak RSS per binary and latency per call kind.
func (e *recExec) snapshot() (RSSMap, CallMap) {
	e.mu.Lock()
	defer e.mu.Unlock()
	rss := RSSMap{}
	for k, v := range e.rss {
		rss[k] = v
	}
	calls := CallMap{}
	for k, v := range e.took {
		calls[k] = summarize(v, e.fail[k])
	}
	for k, n := range e.fail {
		if _, ok := calls[k]; !ok {
			calls[k] = summarize(nil, n)
		}
	}
	return rss, calls
}

// cniCommand is CNI_COMMAND from a plugin environment.
func cniCommand(environ []string) string {
	for _, kv := range environ {
		if v, ok := strings.CutPrefix(kv, "CNI_COMMAND="); ok {
			return v
		}
	}
	return "?"
}

// pluginErr turns a failed plugin run into the CNI error it printed, as
// libcni's RawExec does.
func pluginErr(err error, stdout, stderr []byte) error {
	e := &types.Error{}
	switch {
	case len(stdout) == 0 && len(stderr) == 0:
		e.Msg = fmt.Sprintf("netplugin failed with no error message: %v", err)
	case len(stdout) == 0:
		e.Msg = fmt.Sprintf("netplugin failed: %q: %v", stderr, err)
	default:
		if perr := json.Unmarshal(stdout, e); perr != nil {
			e.Msg = fmt.Sprintf("netplugin failed but error parsing its diagnostic message %q: %v", stdout, perr)
		}
	}
	return e
}
