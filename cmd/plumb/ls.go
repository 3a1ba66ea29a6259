package main

import (
	"flag"
	"fmt"
	"sort"
	"strings"
	"text/tabwriter"

	"github.com/containernetworking/cni/libcni"
	current "github.com/containernetworking/cni/pkg/types/100"
)

// attachment is one cached attachment with its result.
type attachment struct {
	*libcni.NetworkAttachment
	Result *current.Result
}

// cachedAttachments reads libcni's cache (what runtimes using libcni on this
// host have attached), with each attachment's cached result.
func (e *env) cachedAttachments() ([]attachment, error) {
	c := e.cni()
	atts, err := c.GetCachedAttachments("")
	if err != nil {
		return nil, fmt.Errorf("read the attachment cache: %w", err)
	}
	var out []attachment
	for _, a := range atts {
		at := attachment{NetworkAttachment: a}
		if l, err := libcni.ConfListFromBytes(a.Config); err == nil {
			rt := &libcni.RuntimeConf{ContainerID: a.ContainerID, NetNS: a.NetNS, IfName: a.IfName}
			if r, err := c.GetNetworkListCachedResult(l, rt); err == nil && r != nil {
				at.Result, _ = current.NewResultFromResult(r)
			}
		}
		out = append(out, at)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Network != out[j].Network {
			return out[i].Network < out[j].Network
		}
		return out[i].ContainerID < out[j].ContainerID
	})
	return out, nil
}

func (a attachment) addresses() string {
	if a.Result == nil {
		return "-"
	}
	var s []string
	for _, ipc := range a.Result.IPs {
		s = append(s, ipc.Address.String())
	}
	return strings.Join(s, ",")
}

func (a attachment) ports() string {
	pm, ok := a.CapabilityArgs["portMappings"].([]any)
	if !ok || len(pm) == 0 {
		return "-"
	}
	var s []string
	for _, m := range pm {
		mm, _ := m.(map[string]any)
		host := fmt.Sprint(mm["hostPort"])
		if ip, _ := mm["hostIP"].(string); ip != "" {
			host = ip + ":" + host
		}
		s = append(s, fmt.Sprintf("%s->%v/%v", host, mm["containerPort"], mm["protocol"]))
	}
	return strings.Join(s, ",")
}

func cmdLs(e *env, args []string) int {
	fs := flag.NewFlagSet("ls", flag.ContinueOnError)
	if _, code, ok := e.parse(fs, args, 0, "ls [flags]"); !ok {
		return code
	}
	atts, err := e.cachedAttachments()
	if err != nil {
		return e.fail(err)
	}
	w := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "NETWORK\tCONTAINER\tIFNAME\tNETNS\tADDRESSES\tPORTS")
	for _, a := range atts {
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\n", a.Network, a.ContainerID, a.IfName, a.NetNS, a.addresses(), a.ports())
	}
	return errIf(e, w.Flush())
}

func errIf(e *env, err error) int {
	if err != nil {
		return e.fail(err)
	}
	return 0
}
