package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"syscall"

	"github.com/containernetworking/cni/libcni"
	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/plumbnet/plumb/internal/netns"
)

// portMapping is one -p, in the shape of the portMappings capability.
type portMapping struct {
	HostPort      int    `json:"hostPort"`
	ContainerPort int    `json:"containerPort"`
	Protocol      string `json:"protocol"`
	HostIP        string `json:"hostIP,omitempty"`
}

// parsePublish reads [hostIP:]hostPort:containerPort[/proto].
func parsePublish(s string) (portMapping, error) {
	m := portMapping{Protocol: "tcp"}
	spec, proto, ok := strings.Cut(s, "/")
	if ok {
		m.Protocol = strings.ToLower(proto)
	}
	switch m.Protocol {
	case "tcp", "udp", "sctp":
	default:
		return m, fmt.Errorf("-p %s: protocol %q is not tcp, udp or sctp", s, proto)
	}
	i := strings.LastIndex(spec, ":")
	if i < 0 {
		return m, fmt.Errorf("-p %s: want [hostIP:]hostPort:containerPort[/proto]", s)
	}
	host, cport := spec[:i], spec[i+1:]
	if j := strings.LastIndex(host, ":"); j >= 0 {
		m.HostIP = strings.Trim(host[:j], "[]")
		host = host[j+1:]
		if net.ParseIP(m.HostIP) == nil {
			return m, fmt.Errorf("-p %s: %q is not an IP address", s, m.HostIP)
		}
	}
	var err error
	if m.HostPort, err = port(host); err != nil {
		return m, fmt.Errorf("-p %s: host port: %w", s, err)
	}
	if m.ContainerPort, err = port(cport); err != nil {
		return m, fmt.Errorf("-p %s: container port: %w", s, err)
	}
	return m, nil
}

func port(s string) (int, error) {
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 || n > 65535 {
		return 0, fmt.Errorf("%q is not a port (1-65535)", s)
	}
	return n, nil
}

type multi []string

func (m *multi) String() string     { return strings.Join(*m, ",") }
func (m *multi) Set(s string) error { *m = append(*m, s); return nil }

// cmdRun makes a namespace, attaches it to each network, runs CMD inside it
// and, when CMD exits or plumb is interrupted, detaches and removes it.
func cmdRun(e *env, args []string) int {
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	var nets, publish multi
	var ip, name string
	fs.Var(&nets, "net", "network name or file (repeatable; default: the first network in the config directory)")
	fs.Var(&publish, "p", "publish [hostIP:]hostPort:containerPort[/proto] (repeatable)")
	fs.StringVar(&ip, "ip", "", "ask for this address (capability ips)")
	fs.StringVar(&name, "name", "", "namespace name under /run/netns (default plumb-<random>)")
	rest, code, ok := e.parse(fs, args, -1, "run [flags] -- CMD ARGS...")
	if !ok {
		return code
	}
	if len(rest) == 0 {
		fs.Usage()
		return 2
	}
	caps := map[string]any{}
	var maps []portMapping
	for _, p := range publish {
		m, err := parsePublish(p)
		if err != nil {
			return e.fail(err)
		}
		maps = append(maps, m)
	}
	if len(maps) > 0 {
		caps["portMappings"] = maps
	}
	if ip != "" {
		if net.ParseIP(ip) == nil {
			return e.fail(fmt.Errorf("--ip %q is not an IP address", ip))
		}
		caps["ips"] = []string{ip}
	}
	if len(nets) == 0 {
		files, err := libcni.ConfFiles(e.netDir, []string{".conflist"})
		if err != nil || len(files) == 0 {
			return e.fail(fmt.Errorf("no --net given and no .conflist in %s", e.netDir))
		}
		nets = multi{files[0]}
	}
	var lists []*libcni.NetworkConfigList
	for _, n := range nets {
		l, err := e.network(n)
		if err != nil {
			return e.fail(err)
		}
		lists = append(lists, l)
	}

	id := randomID()
	if name == "" {
		name = "plumb-" + id[:12]
	}
	ns, err := netns.CreateNamed(name)
	if err != nil {
		return e.fail(err)
	}
	// From here on, every way out removes what was made.
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	defer signal.Stop(sigs)
	c := e.cni()
	ctx := context.Background()
	var attached []*libcni.RuntimeConf
	var attachedLists []*libcni.NetworkConfigList
	cleanup := func() {
		for i := len(attached) - 1; i >= 0; i-- {
			if err := c.DelNetworkList(ctx, attachedLists[i], attached[i]); err != nil {
				fmt.Fprintf(e.stderr, "plumb: detach from %s: %s\n", attachedLists[i].Name, oneLine(err.Error()))
			}
		}
		ns.Close()
		if err := netns.RemoveNamed(name); err != nil {
			fmt.Fprintln(e.stderr, "plumb:", err)
		}
	}
	defer cleanup()

	for i, l := range lists {
		rt := &libcni.RuntimeConf{ContainerID: id, NetNS: ns.Path(), IfName: fmt.Sprintf("eth%d", i), CapabilityArgs: caps}
		res, err := c.AddNetworkList(ctx, l, rt)
		if err != nil {
			return e.fail(fmt.Errorf("attach to network %s: %w", l.Name, err))
		}
		attached, attachedLists = append(attached, rt), append(attachedLists, l)
		if r, err := current.NewResultFromResult(res); err == nil {
			fmt.Fprintf(e.stderr, "plumb: attached: %s\n", summary(l.Name, r))
		}
		select {
		case s := <-sigs:
			fmt.Fprintf(e.stderr, "plumb: %v before the command started: cleaning up\n", s)
			return 130
		default:
		}
	}

	cmd := exec.Command(rest[0], rest[1:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, e.stdout, e.stderr
	cmd.Env = append(os.Environ(), "PLUMB_NETNS="+ns.Path(), "PLUMB_CONTAINER_ID="+id)
	// Started from a thread inside the namespace, the child lives there.
	if err := ns.Do(cmd.Start); err != nil {
		return e.fail(fmt.Errorf("start %s: %w", rest[0], err))
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	for {
		select {
		case s := <-sigs:
			cmd.Process.Signal(s) // the command decides how to end; cleanup follows its exit
		case err := <-done:
			var ee *exec.ExitError
			if errors.As(err, &ee) {
				if st, ok := ee.Sys().(syscall.WaitStatus); ok && st.Signaled() {
					return 128 + int(st.Signal())
				}
				return ee.ExitCode()
			}
			if err != nil {
				return e.fail(err)
			}
			return 0
		}
	}
}

func randomID() string {
	b := make([]byte, 16)
	rand.Read(b)
	return hex.EncodeToString(b)
}
