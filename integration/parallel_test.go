package integration

import (
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/containernetworking/cni/libcni"
	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/plumbnet/plumb/internal/testns"
)

// TestParallelChain: 64 containers ADDed at once through the whole chain,
// then DELed at once, for both masquerade backends: all succeed, addresses
// are unique, every container's rules exist after ADD and none after DEL.
func TestParallelChain(t *testing.T) {
	const n = 64
	for i, backend := range []string{"nftables", "iptables"} {
		t.Run(backend, func(t *testing.T) {
			e := NewEnv(t)
			bn := bridgeNet{Name: "par-" + backend, Bridge: fmt.Sprintf("plpar%d", i), Subnet4: fmt.Sprintf("10.%d.0.0/16", 81+i), DataDir: t.TempDir(),
				Extra: map[string]any{"ipMasq": true, "ipMasqBackend": backend}}
			// bridge + host-local + portmap: each container publishes its own port.
			var raw map[string]any
			json.Unmarshal([]byte(bn.conflist("1.1.0")), &raw)
			raw["plugins"] = append(raw["plugins"].([]any), map[string]any{"type": "portmap", "backend": backend,
				"capabilities": map[string]bool{"portMappings": true}})
			conf, _ := json.Marshal(raw)
			l := e.ConfList(string(conf))
			rts := make([]*libcni.RuntimeConf, n)
			for j := range rts {
				rts[j] = &libcni.RuntimeConf{ContainerID: fmt.Sprintf("ctr-par-%d", j), NetNS: testns.NewNS(t).Path(), IfName: "eth0",
					CapabilityArgs: map[string]any{"portMappings": []map[string]any{{"hostPort": 31000 + j, "containerPort": 80, "protocol": "tcp"}}}}
			}
			ips := make([]string, n)
			errs := parallel(n, func(j int) error {
				r, err := e.CNI.AddNetworkList(e.Ctx(), l, rts[j])
				if err == nil {
					res, _ := current.NewResultFromResult(r)
					ips[j] = res.IPs[0].Address.IP.String()
				}
				return err
			})
			for j, err := range errs {
				if err != nil {
					t.Errorf("ADD %d: %v", j, err)
				}
			}
			seen := map[string]bool{}
			rs := strings.Join(rulesetLines(t), "\n") // no counters: their numbers could look like ports
			for j := range rts {
				if !strings.Contains(rs, fmt.Sprint(31000+j)) {
					t.Errorf("no rule publishes port %d after ADD", 31000+j)
				}
			}
			for _, ip := range ips {
				if seen[ip] {
					t.Errorf("address %s handed out twice", ip)
				}
				seen[ip] = true
				if !strings.Contains(rs, ip) {
					t.Errorf("no rule for %s after ADD", ip)
				}
			}
			for j, err := range parallel(n, func(j int) error { return e.CNI.DelNetworkList(e.Ctx(), l, rts[j]) }) {
				if err != nil {
					t.Errorf("DEL %d: %v", j, err)
				}
			}
			rs = strings.Join(rulesetLines(t), "\n")
			for j := range rts {
				if strings.Contains(rs, fmt.Sprint(31000+j)) {
					t.Errorf("port %d still published after DEL", 31000+j)
				}
			}
			for _, ip := range ips {
				if ip != "" && (strings.Contains(rs, ip+" ") || strings.Contains(rs, ip+"/")) {
					t.Errorf("rule for %s left after DEL", ip)
				}
			}
			if left := addrFiles(t, bn.DataDir, bn.Name); len(left) != 0 {
				t.Errorf("reservations left: %v", left)
			}
			if !t.Failed() {
				testns.Summary("concurrency: %d parallel ADDs then DELs of bridge+host-local+portmap (%s): all succeeded, 0 duplicate addresses, 0 rules left", n, backend)
			}
		})
	}
}

// parallel runs f(0..n-1) at once and returns each error.
func parallel(n int, f func(int) error) []error {
	errs := make([]error, n)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for j := 0; j < n; j++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			errs[j] = f(j)
		}()
	}
	close(start)
	wg.Wait()
	return errs
}

// TestAddDelRace: ADD and DEL of the same container racing, many times,
// end either attached (and a later DEL cleans up) or cleanly detached;
// after the final DEL nothing of the container is left.
func TestAddDelRace(t *testing.T) {
	e := NewEnv(t)
	bn := bridgeNet{Name: "race", Bridge: "plrace", Subnet4: "10.83.0.0/24", DataDir: t.TempDir(),
		Extra: map[string]any{"ipMasq": true}}
	l := e.ConfList(bn.conflist("1.1.0"))
	base := rulesetLines(t)
	for round := 0; round < 20; round++ {
		n := testns.NewNS(t)
		rt := &libcni.RuntimeConf{ContainerID: fmt.Sprintf("ctr-race-%d", round), NetNS: n.Path(), IfName: "eth0"}
		parallel(2, func(j int) error {
			if j == 0 {
				_, err := e.CNI.AddNetworkList(e.Ctx(), l, rt)
				return err
			}
			return e.CNI.DelNetworkList(e.Ctx(), l, rt)
		})
		if err := e.CNI.DelNetworkList(e.Ctx(), l, rt); err != nil {
			t.Fatalf("round %d: final DEL: %v", round, err)
		}
		if left := leftovers(t, bn.DataDir, bn.Name, rt.ContainerID, base); len(left) != 0 {
			t.Fatalf("round %d: left after the race and a DEL: %v", round, left)
		}
	}
}
