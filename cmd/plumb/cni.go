package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"strings"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
)

// runtimeFlags are cnitool's inputs, as flags with cnitool's environment
// variables as defaults.
type runtimeFlags struct {
	ifname, capArgs, cniArgs, id string
}

func (r *runtimeFlags) define(fs *flag.FlagSet) {
	r.ifname = os.Getenv("CNI_IFNAME")
	if r.ifname == "" {
		r.ifname = "eth0"
	}
	fs.StringVar(&r.ifname, "ifname", r.ifname, "interface name in the namespace ($CNI_IFNAME)")
	fs.StringVar(&r.capArgs, "cap", os.Getenv("CAP_ARGS"), "capability arguments as JSON ($CAP_ARGS), e.g. '{\"portMappings\":[...]}'")
	fs.StringVar(&r.cniArgs, "args", os.Getenv("CNI_ARGS"), "CNI_ARGS, K=V;K=V ($CNI_ARGS)")
	fs.StringVar(&r.id, "id", "", "container ID (default: cnitool's hash of the namespace path)")
}

func (r *runtimeFlags) conf(netns string) (*libcni.RuntimeConf, error) {
	rt := &libcni.RuntimeConf{ContainerID: r.id, NetNS: netns, IfName: r.ifname}
	if rt.ContainerID == "" {
		rt.ContainerID = containerID(netns)
	}
	if r.capArgs != "" {
		if err := json.Unmarshal([]byte(r.capArgs), &rt.CapabilityArgs); err != nil {
			return nil, fmt.Errorf("capability arguments %q: %w", r.capArgs, err)
		}
	}
	for _, kv := range strings.Split(r.cniArgs, ";") {
		if kv == "" {
			continue
		}
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			return nil, fmt.Errorf("CNI_ARGS pair %q is not K=V", kv)
		}
		rt.Args = append(rt.Args, [2]string{k, v})
	}
	return rt, nil
}

// cmdCNI is add, del or check of NETWORK in NETNS.
func cmdCNI(verb string) func(*env, []string) int {
	return func(e *env, args []string) int {
		fs := flag.NewFlagSet(verb, flag.ContinueOnError)
		var rf runtimeFlags
		rf.define(fs)
		rest, code, ok := e.parse(fs, args, 2, verb+" [flags] NETWORK NETNS")
		if !ok {
			return code
		}
		list, err := e.network(rest[0])
		if err != nil {
			return e.fail(err)
		}
		netns, err := netnsPath(rest[1])
		if err != nil {
			return e.fail(err)
		}
		rt, err := rf.conf(netns)
		if err != nil {
			return e.fail(err)
		}
		ctx := context.Background()
		c := e.cni()
		switch verb {
		case "add":
			res, err := c.AddNetworkList(ctx, list, rt)
			if err != nil {
				return e.fail(fmt.Errorf("add %s to network %s: %w", netns, list.Name, err))
			}
			return e.printResult(list.Name, res)
		case "del":
			err = c.DelNetworkList(ctx, list, rt)
		case "check":
			err = c.CheckNetworkList(ctx, list, rt)
		}
		if err != nil {
			return e.fail(fmt.Errorf("%s %s in network %s: %w", verb, netns, list.Name, err))
		}
		if !e.json {
			fmt.Fprintf(e.stdout, "%s ok: %s %s in network %s\n", verb, rt.ContainerID, rt.IfName, list.Name)
		}
		return 0
	}
}

// printResult prints an ADD result as JSON or one line per address.
func (e *env) printResult(network string, res types.Result) int {
	if e.json {
		if err := res.Print(); err != nil {
			return e.fail(err)
		}
		return 0
	}
	r, err := current.NewResultFromResult(res)
	if err != nil {
		return e.fail(err)
	}
	fmt.Fprintln(e.stdout, summary(network, r))
	return 0
}

// summary is one readable line: network, interface, addresses, gateways.
func summary(network string, r *current.Result) string {
	var parts []string
	for _, ipc := range r.IPs {
		ifname := "?"
		if ipc.Interface != nil && *ipc.Interface < len(r.Interfaces) {
			ifname = r.Interfaces[*ipc.Interface].Name
		}
		p := ifname + " " + ipc.Address.String()
		if ipc.Gateway != nil {
			p += " via " + ipc.Gateway.String()
		}
		parts = append(parts, p)
	}
	if len(parts) == 0 {
		parts = []string{"no addresses"}
	}
	return fmt.Sprintf("network %s: %s", network, strings.Join(parts, ", "))
}

func cmdStatus(e *env, args []string) int {
	fs := flag.NewFlagSet("status", flag.ContinueOnError)
	rest, code, ok := e.parse(fs, args, 1, "status [flags] NETWORK")
	if !ok {
		return code
	}
	list, err := e.network(rest[0])
	if err != nil {
		return e.fail(err)
	}
	if err := e.cni().GetStatusNetworkList(context.Background(), list); err != nil {
		return e.fail(fmt.Errorf("network %s is not ready: %w", list.Name, err))
	}
	fmt.Fprintf(e.stdout, "network %s: ready\n", list.Name)
	return 0
}

// cmdGC keeps the attachments libcni's cache knows and lets every plugin
// remove the rest.
func cmdGC(e *env, args []string) int {
	fs := flag.NewFlagSet("gc", flag.ContinueOnError)
	rest, code, ok := e.parse(fs, args, 1, "gc [flags] NETWORK")
	if !ok {
		return code
	}
	list, err := e.network(rest[0])
	if err != nil {
		return e.fail(err)
	}
	c := e.cni()
	atts, err := c.GetCachedAttachments("")
	if err != nil {
		return e.fail(fmt.Errorf("read cached attachments: %w", err))
	}
	var keep []types.GCAttachment
	for _, a := range atts {
		if a.Network == list.Name {
			keep = append(keep, types.GCAttachment{ContainerID: a.ContainerID, IfName: a.IfName})
		}
	}
	if err := c.GCNetworkList(context.Background(), list, &libcni.GCArgs{ValidAttachments: keep}); err != nil {
		return e.fail(fmt.Errorf("gc network %s: %w", list.Name, err))
	}
	fmt.Fprintf(e.stdout, "network %s: collected, %d attachments kept\n", list.Name, len(keep))
	return 0
}
