package main

import (
	"math"
	"strings"
	"testing"

	"github.com/plumbnet/plumb/internal/cniplugin"
)

func conf(extra string) []byte {
	s := `{"cniVersion":"1.0.0","name":"net1","type":"bandwidth"`
	if extra != "" {
		s += "," + extra
	}
	return []byte(s + "}")
}

func TestBandwidthParseNoLimits(t *testing.T) {
	for _, extra := range []string{"", `"ingressRate":0,"egressBurst":0`, `"runtimeConfig":{"bandwidth":{}}`, `"shapedSubnets":[]`} {
		c, err := parseConfig(conf(extra), "")
		if err != nil || c.Shapes() {
			t.Fatalf("%s: %+v %v", extra, c, err)
		}
	}
}

// TestParsePrecedence: as with the reference plugin, static fields, when any
// is set, are the limits; runtimeConfig.bandwidth applies only without them.
func TestBandwidthParsePrecedence(t *testing.T) {
	cases := []struct {
		extra           string
		ingress, egress Shape
	}{
		{`"ingressRate":1000,"ingressBurst":2000`, Shape{1000, 2000}, Shape{}},
		{`"egressRate":1000,"egressBurst":2000,"runtimeConfig":{"bandwidth":{"egressRate":3000,"egressBurst":4000}}`, Shape{}, Shape{1000, 2000}},
		{`"egressRate":1000,"egressBurst":2000,"runtimeConfig":{"bandwidth":{"ingressRate":3000,"ingressBurst":4000}}`, Shape{}, Shape{1000, 2000}},
		{`"runtimeConfig":{"bandwidth":{"ingressRate":3000,"ingressBurst":4000}}`, Shape{3000, 4000}, Shape{}},
		// What containerd sends for a pod annotated with a rate: "no burst limit".
		{`"runtimeConfig":{"bandwidth":{"ingressRate":8000000,"ingressBurst":4294967295}}`, Shape{8000000, math.MaxUint32}, Shape{}},
	}
	for _, tc := range cases {
		c, err := parseConfig(conf(tc.extra), "IgnoreUnknown=1;K8S_POD_NAME=p")
		if err != nil {
			t.Fatalf("%s: %v", tc.extra, err)
		}
		if c.Ingress != tc.ingress || c.Egress != tc.egress {
			t.Fatalf("%s: ingress %+v egress %+v", tc.extra, c.Ingress, c.Egress)
		}
	}
}

func TestBandwidthParseRejects(t *testing.T) {
	cases := map[string]struct {
		stdin []byte
		args  string
		code  uint
		msg   string
	}{
		"bad json":               {[]byte(`{"name":`), "", cniplugin.CodeDecode, "decode"},
		"rate as string":         {conf(`"ingressRate":"1M"`), "", cniplugin.CodeInvalidConfig, "ingressRate"},
		"negative rate":          {conf(`"egressRate":-5,"egressBurst":10`), "", cniplugin.CodeInvalidConfig, "egressRate"},
		"fractional burst":       {conf(`"egressRate":5000,"egressBurst":1.5`), "", cniplugin.CodeInvalidConfig, "egressBurst"},
		"overflowing rate":       {conf(`"ingressRate":18446744073709551616,"ingressBurst":10`), "", cniplugin.CodeInvalidConfig, "ingressRate"},
		"rate without burst":     {conf(`"ingressRate":1000`), "", cniplugin.CodeInvalidConfig, "ingressRate is set without ingressBurst"},
		"burst without rate":     {conf(`"egressBurst":1000`), "", cniplugin.CodeInvalidConfig, "egressBurst is set without egressRate"},
		"runtime without burst":  {conf(`"runtimeConfig":{"bandwidth":{"egressRate":1000}}`), "", cniplugin.CodeInvalidConfig, "runtimeConfig.bandwidth.egressRate is set without"},
		"rate too small":         {conf(`"ingressRate":7,"ingressBurst":1000`), "", cniplugin.CodeInvalidConfig, "below the smallest rate"},
		"rate too big":           {conf(`"ingressRate":10000000000001,"ingressBurst":1000`), "", cniplugin.CodeInvalidConfig, "ingressRate 10000000000001 bits/s is above"},
		"burst too big":          {conf(`"egressRate":1000,"egressBurst":34359738360`), "", cniplugin.CodeInvalidConfig, "egressBurst 34359738360 bits is above"},
		"runtime burst too big":  {conf(`"runtimeConfig":{"bandwidth":{"ingressRate":1000,"ingressBurst":99999999999999}}`), "", cniplugin.CodeInvalidConfig, "runtimeConfig.bandwidth.ingressBurst"},
		"shapedSubnets":          {conf(`"ingressRate":1000,"ingressBurst":1000,"shapedSubnets":["10.0.0.0/8"]`), "", cniplugin.CodeUnsupportedField, `shapedSubnets ["10.0.0.0/8"]: not supported`},
		"unshapedSubnets":        {conf(`"unshapedSubnets":["10.0.0.0/8"]`), "", cniplugin.CodeUnsupportedField, "unshapedSubnets"},
		"unknown CNI_ARGS":       {conf(""), "FOO=1", cniplugin.CodeInvalidEnv, "CNI_ARGS"},
		"runtime bandwidth type": {conf(`"runtimeConfig":{"bandwidth":[1]}`), "", cniplugin.CodeInvalidConfig, "bandwidth"},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			_, err := parseConfig(tc.stdin, tc.args)
			if err == nil {
				t.Fatal("accepted")
			}
			if cniplugin.Code(err) != tc.code || !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("got code %d %q, want code %d containing %q", cniplugin.Code(err), err, tc.code, tc.msg)
			}
		})
	}
	// The largest burst the reference accepts is accepted too.
	if _, err := parseConfig(conf(`"egressRate":1000,"egressBurst":34359738359`), ""); err != nil {
		t.Fatal(err)
	}
}

func TestBandwidthTbfFor(t *testing.T) {
	const ticks = 15.625 // 1000/64: what /proc/net/psched gives on current kernels
	cases := []struct {
		name  string
		shape Shape
		want  tbfParams
	}{
		// 8 Mbit/s = 1 MB/s; 80 kbit = 10 kB takes 10ms at that rate.
		{"plain", Shape{8_000_000, 80_000}, tbfParams{Rate: 1_000_000, Buffer: 156_250, Limit: 25_000 + 10_000}},
		// A bucket smaller than one frame is raised to one frame (1500 + 14).
		{"tiny burst", Shape{8_000_000, 800}, tbfParams{Rate: 1_000_000, Buffer: 23_656, Limit: 25_000 + 1_514}},
		// Kubernetes' 4 Gbit burst at 1 Mbit/s: the bucket time saturates.
		{"huge burst", Shape{1_000_000, math.MaxUint32}, tbfParams{Rate: 125_000, Buffer: math.MaxUint32, Limit: 3_125 + 536_870_911}},
		{"largest", Shape{maxRate, maxBurst}, tbfParams{Rate: maxRate / 8, Buffer: 53_687, Limit: math.MaxUint32}},
	}
	for _, tc := range cases {
		if got := tbfFor(tc.shape, 1500, ticks); got != tc.want {
			t.Errorf("%s: got %+v, want %+v", tc.name, got, tc.want)
		}
	}
}

func TestBandwidthNames(t *testing.T) {
	a := ifbName("ctr1", "eth0")
	if a != ifbName("ctr1", "eth0") || len(a) != 15 || !strings.HasPrefix(a, "plbw") {
		t.Fatalf("ifb name %q not stable or wrong length", a)
	}
	if a == ifbName("ctr1", "eth1") || a == ifbName("ctr2", "eth0") || a == ifbName("ctr1e", "th0") {
		t.Fatal("ifb names collide across attachments")
	}
	if r := refIfbName("net1", "ctr1"); len(r) != 15 || !strings.HasPrefix(r, "bwp") {
		t.Fatalf("reference name %q", r)
	}
	alias := ifbAlias("net1", "ctr1", "eth0")
	if o, ok := aliasOwner(alias, "net1"); !ok || o.ContainerID != "ctr1" || o.IfName != "eth0" {
		t.Fatalf("owner of %q: %+v %v", alias, o, ok)
	}
	for _, other := range []string{ifbAlias("net10", "c", "eth0"), "plumb/net1/c/eth0", "plumb-bw/net1/c", "plumb-bw/net1/c/a/b", ""} {
		if _, ok := aliasOwner(other, "net1"); ok {
			t.Fatalf("alias %q taken as net1's", other)
		}
	}
}
