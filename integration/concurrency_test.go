package integration

import (
	"encoding/json"
	"fmt"
	"net"
	"slices"
	"sync"
	"testing"
	"time"

	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/plumbnet/plumb/internal/cniplugin"
	"github.com/plumbnet/plumb/internal/testns"
)

// concurrentAdd is one of many host-local ADDs run at once.
type concurrentAdd struct {
	ContainerID string
	Outcome     outcome
	Addr        string // the address reserved, "" on failure
	Took        time.Duration
}

// addAtOnce starts n host-local ADD processes of distinct containers
// against one /24 and releases them together, as a runtime starting many
// pods does.
func addAtOnce(t *testing.T, n int) (dataDir string, adds []concurrentAdd) {
	t.Helper()
	testns.RequireRoot(t)
	netnsPath := testns.NewNS(t).Path()
	dataDir = t.TempDir()
	// The default lockTimeout: a burst of pod starts must not need tuning.
	stdin := hostLocal{DataDir: dataDir}.conf(t, "1.0.0")

	adds = make([]concurrentAdd, n)
	errs := make([]error, n)
	barrier := make(chan struct{})
	var wg sync.WaitGroup
	for i := range adds {
		adds[i].ContainerID = fmt.Sprintf("ctr-%03d", i)
		cmd := call{Command: "ADD", ContainerID: adds[i].ContainerID, Netns: netnsPath, IfName: "eth0", Stdin: stdin}.prepare("host-local")
		wg.Go(func() {
			<-barrier
			t0 := time.Now()
			adds[i].Outcome, errs[i] = finish(cmd)
			adds[i].Took = time.Since(t0)
		})
	}
	start := time.Now()
	close(barrier)
	wg.Wait()
	took := make([]time.Duration, n)
	for i := range adds {
		took[i] = adds[i].Took
	}
	slices.Sort(took)
	t.Logf("%d concurrent ADDs took %v; per process: median %v, max %v", n, time.Since(start), took[n/2], took[n-1])

	for i := range adds {
		if errs[i] != nil {
			t.Fatalf("ADD %s: %v", adds[i].ContainerID, errs[i])
		}
		o := adds[i].Outcome
		if o.Exit != 0 {
			continue
		}
		var res current.Result
		if err := json.Unmarshal(o.Stdout, &res); err != nil {
			t.Fatalf("ADD %s: decode result %s: %v", adds[i].ContainerID, o.Stdout, err)
		}
		if len(res.IPs) != 1 {
			t.Fatalf("ADD %s returned %d addresses, want 1: %s", adds[i].ContainerID, len(res.IPs), o.Stdout)
		}
		adds[i].Addr = res.IPs[0].Address.IP.String()
	}
	return dataDir, adds
}

// checkNoDuplicates fails if two ADDs got one address, or an address's
// reservation file does not name the ADD that got it, or a file exists
// for no successful ADD.
func checkNoDuplicates(t *testing.T, dataDir string, adds []concurrentAdd) map[string]bool {
	t.Helper()
	got := map[string]string{}
	for _, a := range adds {
		if a.Addr == "" {
			continue
		}
		if other, dup := got[a.Addr]; dup {
			t.Errorf("%s given to both %s and %s", a.Addr, other, a.ContainerID)
		}
		got[a.Addr] = a.ContainerID
		ip := net.ParseIP(a.Addr).To4()
		if ip == nil || !ip.Mask(net.CIDRMask(24, 32)).Equal(net.IPv4(10, 10, 0, 0).To4()) || ip[3] < 2 || ip[3] > 254 {
			t.Errorf("%s got %s, not a host address of 10.10.0.0/24 past the gateway", a.ContainerID, a.Addr)
		}
	}
	files := reservationFiles(t, dataDir)
	for addr, id := range got {
		if files[addr] != ownerLine(id, "eth0") {
			t.Errorf("file for %s holds %q, want %q", addr, files[addr], ownerLine(id, "eth0"))
		}
	}
	for addr, content := range files {
		if _, ok := got[addr]; !ok {
			t.Errorf("reservation file %s (%q) belongs to no successful ADD", addr, content)
		}
	}
	taken := map[string]bool{}
	for addr := range got {
		taken[addr] = true
	}
	return taken
}

// TestHostLocalConcurrentAdds: 64 simultaneous ADDs all succeed with
// distinct addresses, each recorded once.
func TestHostLocalConcurrentAdds(t *testing.T) {
	const n = 64
	dataDir, adds := addAtOnce(t, n)
	for _, a := range adds {
		if a.Outcome.Exit != 0 {
			t.Errorf("ADD %s failed: %s", a.ContainerID, a.Outcome)
		}
	}
	if taken := checkNoDuplicates(t, dataDir, adds); len(taken) != n {
		t.Errorf("%d distinct addresses, want %d", len(taken), n)
	}
	if !t.Failed() {
		testns.Summary("concurrency: %d simultaneous host-local ADD processes: %d distinct addresses, 0 duplicates", n, n)
	}
}

// TestHostLocalConcurrentExhaustion: 300 simultaneous ADDs against the 253
// free addresses of a /24: exactly 253 succeed, covering .2-.254, and the
// other 47 fail with "exhausted" (100) and nothing else.
func TestHostLocalConcurrentExhaustion(t *testing.T) {
	const n, free = 300, 253
	dataDir, adds := addAtOnce(t, n)
	failed := 0
	for _, a := range adds {
		if a.Outcome.Exit == 0 {
			continue
		}
		failed++
		if a.Outcome.Err.Code != cniplugin.CodeExhausted {
			t.Errorf("ADD %s failed with code %d (%q), want %d", a.ContainerID, a.Outcome.Err.Code, a.Outcome.Err.Msg, cniplugin.CodeExhausted)
		}
	}
	if failed != n-free {
		t.Errorf("%d ADDs failed, want %d", failed, n-free)
	}
	taken := checkNoDuplicates(t, dataDir, adds)
	for i := 2; i <= 254; i++ {
		if addr := fmt.Sprintf("10.10.0.%d", i); !taken[addr] {
			t.Errorf("%s was never handed out", addr)
		}
	}
	if !t.Failed() {
		testns.Summary("concurrency: %d simultaneous host-local ADDs on a /24: %d addresses, %d clean exhaustion errors, 0 duplicates", n, free, n-free)
	}
}
