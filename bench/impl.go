package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/invoke"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/vishvananda/netlink"

	"github.com/plumbnet/plumb/internal/netns"
)

// networkName is the CNI network every implementation attaches to (each in
// its own host namespace, so the names never meet).
const networkName = "pbench"

// container is one pre-created container namespace and the identity of the
// attachment made to it in the current phase.
type container struct {
	Path     string // /run/netns/<name>
	ID       string // 64 hex digits, like a runtime's
	HostPort int    // the one published TCP port
}

// impl is one way of attaching containers: a CNI chain run through libcni,
// or the in-process netlink floor.
type impl interface {
	Name() string
	// Setup prepares a phase in host, a fresh namespace of its own.
	Setup(host *netns.NS, backend string) error
	Add(ctx context.Context, c container) (net.IP, error)
	Del(ctx context.Context, c container) error
	// Probe runs extra, untimed calls to learn what the timed ones cannot
	// show (host-local's RSS: bridge runs it, not us).
	Probe(ctx context.Context, c container) error
	// Finish ends the phase: it returns what was recorded, drops every
	// handle on the host namespace (so it can die) and removes state.
	Finish() (rss RSSMap, calls CallMap)
}

// reserver is an impl whose IPAM keeps reservations on disk.
type reserver interface {
	Reservations() int
}

// cniImpl runs a conflist through libcni with the plugins in binDir, the way
// container runtimes call them.
type cniImpl struct {
	name    string
	binDir  string
	bridge  string
	subnet  string
	portmap bool

	timeBin string // GNU time, for the RSS pass; "" skips it

	tmp     string
	dataDir string
	exec    *recExec
	cni     *libcni.CNIConfig
	list    *libcni.NetworkConfigList
	rssExec *recExec
	rssCNI  *libcni.CNIConfig
}

func (c *cniImpl) Name() string { return c.name }

// conflist is the chain the issue names: bridge with isGateway and ipMasq,
// host-local over a /16, portmap with the portMappings capability; the
// firewall backend is the same for masquerade and port mapping.
func (c *cniImpl) conflist(backend string) ([]byte, error) {
	plugins := []any{map[string]any{
		"type":          "bridge",
		"bridge":        c.bridge,
		"isGateway":     true,
		"ipMasq":        true,
		"ipMasqBackend": backend,
		"ipam": map[string]any{
			"type":    "host-local",
			"ranges":  [][]map[string]string{{{"subnet": c.subnet}}},
			"dataDir": c.dataDir,
		},
	}}
	if c.portmap {
		plugins = append(plugins, map[string]any{
			"type":         "portmap",
			"capabilities": map[string]bool{"portMappings": true},
			"backend":      backend,
		})
	}
	return json.Marshal(map[string]any{"cniVersion": "1.1.0", "name": networkName, "plugins": plugins})
}

func (c *cniImpl) Setup(host *netns.NS, backend string) error {
	tmp, err := os.MkdirTemp("", "plumb-bench-"+c.name+"-")
	if err != nil {
		return err
	}
	c.tmp, c.dataDir = tmp, filepath.Join(tmp, "ipam")
	js, err := c.conflist(backend)
	if err != nil {
		return err
	}
	if c.list, err = libcni.ConfListFromBytes(js); err != nil {
		return fmt.Errorf("%s conflist: %w", c.name, err)
	}
	c.exec = newRecExec(host)
	c.cni = libcni.NewCNIConfigWithCacheDir([]string{c.binDir}, filepath.Join(tmp, "cache"), c.exec)
	if c.timeBin != "" {
		c.rssExec = c.exec.rssExec(c.timeBin, tmp)
		c.rssCNI = libcni.NewCNIConfigWithCacheDir([]string{c.binDir}, filepath.Join(tmp, "cache"), c.rssExec)
	}
	return nil
}

func (c *cniImpl) rt(ct container) *libcni.RuntimeConf {
	rt := &libcni.RuntimeConf{ContainerID: ct.ID, NetNS: ct.Path, IfName: "eth0"}
	if c.portmap {
		rt.CapabilityArgs = map[string]any{"portMappings": []map[string]any{
			{"hostPort": ct.HostPort, "containerPort": 80, "protocol": "tcp"},
		}}
	}
	return rt
}

func (c *cniImpl) Add(ctx context.Context, ct container) (net.IP, error) {
	res, err := c.cni.AddNetworkList(ctx, c.list, c.rt(ct))
	if err != nil {
		return nil, err
	}
	r, err := current.NewResultFromResult(res)
	if err != nil {
		return nil, fmt.Errorf("convert result: %w", err)
	}
	if len(r.IPs) == 0 {
		return nil, errors.New("result has no address")
	}
	return r.IPs[0].Address.IP, nil
}

func (c *cniImpl) Del(ctx context.Context, ct container) error {
	return c.cni.DelNetworkList(ctx, c.list, c.rt(ct))
}

// Probe is the untimed RSS pass: the chain's ADD and DEL for one more
// container, and host-local's ADD and DEL run directly with the chain's
// IPAM config and store (bridge runs it, so libcni never sees it), each
// plugin under GNU time.
func (c *cniImpl) Probe(ctx context.Context, ct container) error {
	if c.rssCNI == nil {
		return nil
	}
	if _, err := c.rssCNI.AddNetworkList(ctx, c.list, c.rt(ct)); err != nil {
		c.rssCNI.DelNetworkList(ctx, c.list, c.rt(ct))
		return fmt.Errorf("chain ADD: %w", err)
	}
	if err := c.rssCNI.DelNetworkList(ctx, c.list, c.rt(ct)); err != nil {
		return fmt.Errorf("chain DEL: %w", err)
	}
	conf, err := json.Marshal(map[string]any{
		"cniVersion": "1.1.0", "name": networkName, "type": "host-local",
		"ipam": map[string]any{
			"type":    "host-local",
			"ranges":  [][]map[string]string{{{"subnet": c.subnet}}},
			"dataDir": c.dataDir,
		},
	})
	if err != nil {
		return err
	}
	path := filepath.Join(c.binDir, "host-local")
	args := func(verb string) *invoke.Args {
		return &invoke.Args{Command: verb, ContainerID: ct.ID, NetNS: ct.Path, IfName: "eth9", Path: c.binDir}
	}
	if _, err := invoke.ExecPluginWithResult(ctx, path, conf, args("ADD"), c.rssExec); err != nil {
		return fmt.Errorf("host-local ADD: %w", err)
	}
	if err := invoke.ExecPluginWithoutResult(ctx, path, conf, args("DEL"), c.rssExec); err != nil {
		return fmt.Errorf("host-local DEL: %w", err)
	}
	return nil
}

// Trace runs the chain's ADD and DEL once, each plugin under strace.
func (c *cniImpl) Trace(ctx context.Context, ct container, dir, prefix string) error {
	cfg := libcni.NewCNIConfigWithCacheDir([]string{c.binDir}, filepath.Join(c.tmp, "cache"), c.exec.traceExec(dir, prefix))
	if _, err := cfg.AddNetworkList(ctx, c.list, c.rt(ct)); err != nil {
		cfg.DelNetworkList(ctx, c.list, c.rt(ct))
		return fmt.Errorf("traced ADD: %w", err)
	}
	if err := cfg.DelNetworkList(ctx, c.list, c.rt(ct)); err != nil {
		return fmt.Errorf("traced DEL: %w", err)
	}
	return nil
}

// Reservations counts host-local's address files in the chain's store.
func (c *cniImpl) Reservations() int { return countReservations(filepath.Join(c.dataDir, networkName)) }

func (c *cniImpl) Finish() (RSSMap, CallMap) {
	_, calls := c.exec.snapshot()
	var rss RSSMap
	if c.rssExec != nil {
		rss, _ = c.rssExec.snapshot()
	}
	c.exec, c.rssExec, c.cni, c.rssCNI = nil, nil, nil, nil // drop the host namespace
	os.RemoveAll(c.tmp)
	return rss, calls
}

// countReservations counts host-local's per-address files.
func countReservations(dir string) int {
	entries, _ := os.ReadDir(dir)
	n := 0
	for _, e := range entries {
		if name := e.Name(); name != "lock" && !strings.HasPrefix(name, "last_reserved_ip") && !strings.HasPrefix(name, ".") {
			n++
		}
	}
	return n
}

// containerID is a runtime-like 64-hex ID, unique per phase and slot.
func containerID(parts ...any) string {
	sum := sha256.Sum256([]byte(fmt.Sprint(parts...)))
	return hex.EncodeToString(sum[:])
}

// hostNS is one implementation's throwaway host namespace for one phase.
type hostNS struct {
	name string
	ns   *netns.NS
}

func newHostNS(name string) (*hostNS, error) {
	n, err := netns.CreateNamed(name)
	if err != nil {
		return nil, err
	}
	h := &hostNS{name: name, ns: n}
	nl, err := n.Netlink()
	if err != nil {
		h.remove()
		return nil, err
	}
	defer nl.Close()
	lo, err := nl.LinkByName("lo")
	if err == nil {
		err = nl.LinkSetUp(lo)
	}
	if err != nil {
		h.remove()
		return nil, fmt.Errorf("lo up in %s: %w", name, err)
	}
	return h, nil
}

// remove drops our handle and the name; the kernel then deletes the
// namespace with everything in it (bridge, veths, nft tables, iptables
// chains), which also deletes the veth peers in the containers.
func (h *hostNS) remove() error {
	h.ns.Close()
	return netns.RemoveNamed(h.name)
}

// waitDetached waits until the container namespaces no longer hold eth0:
// the kernel finished tearing down the host namespace they were attached to
// (it does so asynchronously), so that work does not spill into the next
// phase's timings.
func waitDetached(paths []string, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for _, p := range paths {
		n, err := netns.Open(p)
		if err != nil {
			return err
		}
		h, err := n.Netlink()
		if err != nil {
			n.Close()
			return err
		}
		for {
			_, err := h.LinkByName("eth0")
			if errors.As(err, new(netlink.LinkNotFoundError)) {
				break
			}
			if time.Now().After(deadline) {
				h.Close()
				n.Close()
				return fmt.Errorf("eth0 still in %s after %v", p, limit)
			}
			time.Sleep(20 * time.Millisecond)
		}
		h.Close()
		n.Close()
	}
	return nil
}
