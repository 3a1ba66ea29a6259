package main

import (
	"crypto/sha256"
	"crypto/sha512"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math"
	"strings"
	"time"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/plumbnet/plumb/internal/cniplugin"
)

const (
	// minRate is the smallest rate tbf can apply: one byte per second.
	minRate = 8
	// maxRate (bits/s) is far above any interface; beyond it a number is a typo.
	maxRate = 10_000_000_000_000 // 10 Tbit/s
	// maxBurst (bits) keeps the bucket size in bytes within tbf's 32 bits, as
	// the reference plugin requires.
	maxBurst = 8*math.MaxUint32 - 1
	// latency bounds how long a packet may wait in the queue behind the bucket
	// (tc's "latency"): the reference plugin's 25ms.
	latency = 25 * time.Millisecond
	// ethHeader is what a frame carries beyond the MTU-sized packet.
	ethHeader = 14
)

// Shape is one direction's limit: rate in bits/s, burst in bits. A zero
// Rate does not shape.
type Shape struct {
	Rate, Burst uint64
}

// On reports whether s limits anything.
func (s Shape) On() bool { return s.Rate > 0 }

// entry is the reference plugin's bandwidth fields (bits/s and bits), both
// at the top of the config and in runtimeConfig.bandwidth.
type entry struct {
	IngressRate  uint64 `json:"ingressRate,omitempty"`
	IngressBurst uint64 `json:"ingressBurst,omitempty"`
	EgressRate   uint64 `json:"egressRate,omitempty"`
	EgressBurst  uint64 `json:"egressBurst,omitempty"`
}

type netConf struct {
	types.PluginConf
	entry
	ShapedSubnets   json.RawMessage `json:"shapedSubnets,omitempty"`
	UnshapedSubnets json.RawMessage `json:"unshapedSubnets,omitempty"`
	RuntimeConfig   struct {
		Bandwidth *entry `json:"bandwidth,omitempty"`
	} `json:"runtimeConfig,omitempty"`
}

// Config is a validated bandwidth config. Ingress is traffic to the
// container, Egress traffic from it.
type Config struct {
	types.PluginConf
	Ingress, Egress Shape
}

// Shapes reports whether the config limits either direction.
func (c *Config) Shapes() bool { return c.Ingress.On() || c.Egress.On() }

// parseConfig validates everything before any side effect. As with the
// reference plugin, the static fields, when any is set, are the limits and
// runtimeConfig.bandwidth (capability "bandwidth", how Kubernetes passes a
// pod's annotations) is ignored; otherwise runtimeConfig.bandwidth is used.
func parseConfig(stdin []byte, args string) (*Config, error) {
	var nc netConf
	if err := cniplugin.Decode(stdin, &nc); err != nil {
		return nil, err
	}
	if err := cniplugin.ParseArgs(args, &cniplugin.Args{}); err != nil {
		return nil, err
	}
	for key, raw := range map[string]json.RawMessage{"shapedSubnets": nc.ShapedSubnets, "unshapedSubnets": nc.UnshapedSubnets} {
		if len(raw) > 0 && string(raw) != "null" && string(raw) != "[]" {
			return nil, cniplugin.Errorf(cniplugin.CodeUnsupportedField,
				"%s %s: not supported by plumb's bandwidth plugin (every packet of the container is shaped); remove the field", key, raw)
		}
	}
	c := &Config{PluginConf: nc.PluginConf}
	rt := nc.RuntimeConfig.Bandwidth
	if nc.entry != (entry{}) {
		rt = nil // a conflist that sets limits is not overridden by pods
	}
	var err error
	if c.Ingress, err = shape("ingress", nc.entry.IngressRate, nc.entry.IngressBurst, rt, true); err != nil {
		return nil, err
	}
	if c.Egress, err = shape("egress", nc.entry.EgressRate, nc.entry.EgressBurst, rt, false); err != nil {
		return nil, err
	}
	return c, nil
}

// shape picks one direction's limit and validates it.
func shape(dir string, rate, burst uint64, rt *entry, ingress bool) (Shape, error) {
	src := ""
	if rt != nil {
		r, b := rt.EgressRate, rt.EgressBurst
		if ingress {
			r, b = rt.IngressRate, rt.IngressBurst
		}
		if r != 0 || b != 0 {
			rate, burst, src = r, b, "runtimeConfig.bandwidth."
		}
	}
	rateKey, burstKey := src+dir+"Rate", src+dir+"Burst"
	switch {
	case rate == 0 && burst == 0:
		return Shape{}, nil
	case burst == 0:
		return Shape{}, cniplugin.InvalidConfig("%s is set without %s: a token bucket needs both (bits/s and bits)", rateKey, burstKey)
	case rate == 0:
		return Shape{}, cniplugin.InvalidConfig("%s is set without %s: a token bucket needs both (bits/s and bits)", burstKey, rateKey)
	case rate < minRate:
		return Shape{}, cniplugin.InvalidConfig("%s %d bits/s is below the smallest rate tbf applies (%d bits/s)", rateKey, rate, minRate)
	case rate > maxRate:
		return Shape{}, cniplugin.InvalidConfig("%s %d bits/s is above %d bits/s", rateKey, rate, uint64(maxRate))
	case burst > maxBurst:
		return Shape{}, cniplugin.InvalidConfig("%s %d bits is above %d bits (4 GiB)", burstKey, burst, uint64(maxBurst))
	}
	return Shape{Rate: rate, Burst: burst}, nil
}

// tbfParams is a token bucket as the kernel's tbf qdisc takes it.
type tbfParams struct {
	Rate   uint64 // bytes/s
	Buffer uint32 // bucket size as the time to send it at Rate, in psched ticks
	Limit  uint32 // bytes that may queue: latency's worth of Rate plus the bucket
}

// tbfFor turns a Shape into tbf parameters for a link with the given MTU.
// The bucket holds at least one full-size frame: a smaller one passes no
// full-size packet at all. Values beyond 32 bits saturate (a Kubernetes pod
// gets a 4 Gbit burst, "no burst limit", whatever its rate).
func tbfFor(s Shape, mtu int, ticksPerUsec float64) tbfParams {
	rate := s.Rate / 8
	burst := s.Burst / 8
	if least := uint64(mtu) + ethHeader; burst < least {
		burst = least
	}
	usec := float64(burst) * float64(time.Second/time.Microsecond) / float64(rate)
	return tbfParams{
		Rate:   rate,
		Buffer: saturate(usec * ticksPerUsec),
		Limit:  saturate(float64(rate)*latency.Seconds() + float64(burst)),
	}
}

func saturate(v float64) uint32 {
	if v >= math.MaxUint32 {
		return math.MaxUint32
	}
	return uint32(v)
}

// aliasPrefix tags every ifb plumb creates with its owner, so GC finds the
// ones of attachments the runtime forgot.
const aliasPrefix = "plumb-bw/"

// ifbName is stable per attachment so DEL finds the device without
// prevResult or the container namespace; at most 15 bytes (IFNAMSIZ - 1).
func ifbName(containerID, ifname string) string {
	sum := sha256.Sum256([]byte(containerID + "\x00" + ifname))
	return "plbw" + hex.EncodeToString(sum[:])[:11]
}

// refIfbName is the name the reference plugin gives its ifb, so DEL also
// removes one left by it when a node switched plugins with containers running.
func refIfbName(network, containerID string) string {
	sum := sha512.Sum512([]byte(network + containerID))
	return ("bwp" + hex.EncodeToString(sum[:]))[:15]
}

func ifbAlias(network, containerID, ifname string) string {
	return aliasPrefix + network + "/" + containerID + "/" + ifname
}

// aliasOwner parses an alias of network's ifbs; ok false for anything else.
func aliasOwner(alias, network string) (cniplugin.Attachment, bool) {
	rest, ok := strings.CutPrefix(alias, aliasPrefix+network+"/")
	if !ok {
		return cniplugin.Attachment{}, false
	}
	id, ifname, ok := strings.Cut(rest, "/")
	if !ok || id == "" || ifname == "" || strings.Contains(ifname, "/") {
		return cniplugin.Attachment{}, false
	}
	return cniplugin.Attachment{ContainerID: id, IfName: ifname}, true
}

// describe is a Shape for messages.
func describe(s Shape) string { return fmt.Sprintf("%d bits/s, burst %d bits", s.Rate, s.Burst) }
