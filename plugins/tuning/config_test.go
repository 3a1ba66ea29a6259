package main

import (
	"strings"
	"testing"

	"github.com/plumbnet/plumb/internal/cniplugin"
)

func conf(extra string) []byte {
	s := `{"cniVersion":"1.0.0","name":"net1","type":"tuning"`
	if extra != "" {
		s += "," + extra
	}
	return []byte(s + "}")
}

func TestTuningParseDefaults(t *testing.T) {
	c, err := parseConfig(conf(""), "", "eth0")
	if err != nil {
		t.Fatal(err)
	}
	if c.DataDir != "/run/cni/tuning" || !c.Want.IsEmpty() || c.Sysctls != nil {
		t.Fatalf("defaults: %+v", c)
	}
}

func TestTuningParseSettings(t *testing.T) {
	c, err := parseConfig(conf(`"mac":"02:AA:00:00:00:01","mtu":1400,"promisc":true,"allmulti":false,"txQLen":0,
		"dataDir":"/tmp/x","sysctl":{"net.ipv4.conf.IFNAME.arp_filter":"1","net/ipv4/conf/eth0.5/arp_ignore":"2","net.core.somaxconn":"512"}`), "", "eth0")
	if err != nil {
		t.Fatal(err)
	}
	w := c.Want
	if w.MAC != "02:aa:00:00:00:01" || w.MTU != 1400 || !*w.Promisc || *w.Allmulti || *w.TxQLen != 0 || c.DataDir != "/tmp/x" {
		t.Fatalf("settings: %+v", w)
	}
	want := map[string]string{
		"net/ipv4/conf/eth0/arp_filter":   "1", // IFNAME replaced, dots turned into slashes
		"net/ipv4/conf/eth0.5/arp_ignore": "2", // slash form keeps the dot in the interface name
		"net/core/somaxconn":              "512",
	}
	if len(w.Sysctl) != len(want) {
		t.Fatalf("sysctls: %v", w.Sysctl)
	}
	for k, v := range want {
		if w.Sysctl[k] != v {
			t.Fatalf("sysctl %s = %q, want %q (all: %v)", k, w.Sysctl[k], v, w.Sysctl)
		}
	}
	if c.Sysctls[0].Path != "net/core/somaxconn" || c.Sysctls[0].Key != "net.core.somaxconn" {
		t.Fatalf("sysctls not sorted by path, or key lost: %+v", c.Sysctls)
	}
}

// TestParseMACPrecedence: config < CNI_ARGS < runtimeConfig < args.cni, as
// in the reference tuning plugin.
func TestTuningParseMACPrecedence(t *testing.T) {
	cases := []struct {
		extra, args, want string
	}{
		{`"mac":"02:00:00:00:00:01"`, "", "02:00:00:00:00:01"},
		{`"mac":"02:00:00:00:00:01"`, "MAC=02:00:00:00:00:02", "02:00:00:00:00:02"},
		{`"mac":"02:00:00:00:00:01","runtimeConfig":{"mac":"02:00:00:00:00:03"}`, "MAC=02:00:00:00:00:02", "02:00:00:00:00:03"},
		{`"runtimeConfig":{"mac":"02:00:00:00:00:03"},"args":{"cni":{"mac":"02:00:00:00:00:04"}}`, "MAC=02:00:00:00:00:02", "02:00:00:00:00:04"},
		{"", "IgnoreUnknown=1;K8S_POD_NAME=p;MAC=02:00:00:00:00:05", "02:00:00:00:00:05"},
	}
	for _, tc := range cases {
		c, err := parseConfig(conf(tc.extra), tc.args, "eth0")
		if err != nil || c.Want.MAC != tc.want {
			t.Fatalf("%s + %q: mac %v, %v; want %s", tc.extra, tc.args, c, err, tc.want)
		}
	}
}

func TestTuningParseArgsOverride(t *testing.T) {
	c, err := parseConfig(conf(`"mtu":1400,"promisc":true,"sysctl":{"net.ipv4.conf.eth0.arp_filter":"1"},
		"args":{"cni":{"mtu":9000,"promisc":false,"allmulti":true,"txQLen":7,"sysctl":{"net.ipv4.conf.eth0.arp_filter":"0","net.ipv6.conf.eth0.accept_ra":"0"},"ips":["10.0.0.1"]}}`), "", "eth0")
	if err != nil {
		t.Fatal(err)
	}
	w := c.Want
	if w.MTU != 9000 || w.Promisc != nil || !*w.Allmulti || *w.TxQLen != 7 {
		t.Fatalf("args.cni did not override: %+v", w)
	}
	if w.Sysctl["net/ipv4/conf/eth0/arp_filter"] != "0" || w.Sysctl["net/ipv6/conf/eth0/accept_ra"] != "0" {
		t.Fatalf("sysctls: %v", w.Sysctl)
	}
}

func TestTuningParseRejects(t *testing.T) {
	cases := map[string]struct {
		stdin []byte
		args  string
		code  uint
		msg   string
	}{
		"bad json":              {[]byte(`{"name":`), "", cniplugin.CodeDecode, "decode"},
		"mtu type":              {conf(`"mtu":"big"`), "", cniplugin.CodeInvalidConfig, `"mtu"`},
		"sysctl value type":     {conf(`"sysctl":{"net.ipv4.ip_forward":1}`), "", cniplugin.CodeInvalidConfig, "sysctl"},
		"mtu low":               {conf(`"mtu":20`), "", cniplugin.CodeInvalidConfig, "mtu 20"},
		"mtu high":              {conf(`"mtu":70000`), "", cniplugin.CodeInvalidConfig, "mtu 70000"},
		"mtu negative":          {conf(`"mtu":-1`), "", cniplugin.CodeInvalidConfig, "mtu -1"},
		"args mtu":              {conf(`"args":{"cni":{"mtu":10}}`), "", cniplugin.CodeInvalidConfig, "mtu 10"},
		"txqlen negative":       {conf(`"txQLen":-1`), "", cniplugin.CodeInvalidConfig, "txQLen -1"},
		"bad mac":               {conf(`"mac":"zz"`), "", cniplugin.CodeInvalidConfig, "not a hardware address"},
		"multicast mac":         {conf(`"mac":"01:00:5e:00:00:01"`), "", cniplugin.CodeInvalidConfig, "multicast"},
		"bad runtime mac":       {conf(`"runtimeConfig":{"mac":"nope"}`), "", cniplugin.CodeInvalidConfig, "nope"},
		"bad CNI_ARGS mac":      {conf(""), "MAC=nope", cniplugin.CodeInvalidConfig, "nope"},
		"unknown CNI_ARGS":      {conf(""), "FOO=1", cniplugin.CodeInvalidEnv, "CNI_ARGS"},
		"relative dataDir":      {conf(`"dataDir":"state"`), "", cniplugin.CodeInvalidConfig, "dataDir"},
		"dotdot dataDir":        {conf(`"dataDir":"/var/lib/../../etc"`), "", cniplugin.CodeInvalidConfig, "dataDir"},
		"escape dotted":         {conf(`"sysctl":{"net/../../kernel/x":"1"}`), "", cniplugin.CodeInvalidConfig, "not a sysctl name"},
		"escape dotdot dots":    {conf(`"sysctl":{"net.ipv4....kernel":"1"}`), "", cniplugin.CodeInvalidConfig, "not a sysctl name"},
		"kernel key":            {conf(`"sysctl":{"kernel.x":"1"}`), "", cniplugin.CodeInvalidConfig, "only network sysctls"},
		"kernel key slashes":    {conf(`"sysctl":{"kernel/core_pattern":"|/bin/x"}`), "", cniplugin.CodeInvalidConfig, "only network sysctls"},
		"absolute key":          {conf(`"sysctl":{"/proc/sys/net/ipv4/ip_forward":"1"}`), "", cniplugin.CodeInvalidConfig, "not a sysctl name"},
		"bare net":              {conf(`"sysctl":{"net":"1"}`), "", cniplugin.CodeInvalidConfig, "only network sysctls"},
		"global net.core":       {conf(`"sysctl":{"net.core.rmem_max":"1"}`), "", cniplugin.CodeInvalidConfig, "not a per-network-namespace sysctl"},
		"global backlog":        {conf(`"sysctl":{"net.core.netdev_max_backlog":"1"}`), "", cniplugin.CodeInvalidConfig, "not a per-network-namespace sysctl"},
		"somaxconn lookalike":   {conf(`"sysctl":{"net.core.somaxconnx":"1"}`), "", cniplugin.CodeInvalidConfig, "not a per-network-namespace sysctl"},
		"args global":           {conf(`"args":{"cni":{"sysctl":{"net.core.wmem_max":"1"}}}`), "", cniplugin.CodeInvalidConfig, "net.core.wmem_max"},
		"newline value":         {conf(`"sysctl":{"net.ipv4.ip_forward":"1\nnet.core.rmem_max=9"}`), "", cniplugin.CodeInvalidConfig, "line break"},
		"empty value":           {conf(`"sysctl":{"net.ipv4.ip_forward":" "}`), "", cniplugin.CodeInvalidConfig, "empty"},
		"duplicate key":         {conf(`"sysctl":{"net.ipv4.ip_forward":"1","net.ipv4.ip_forward":"0"}`), "", cniplugin.CodeInvalidConfig, "given twice"},
		"two spellings":         {conf(`"sysctl":{"net.ipv4.ip_forward":"1","net/ipv4/ip_forward":"0"}`), "", cniplugin.CodeInvalidConfig, "name the same sysctl"},
		"duplicate in args.cni": {conf(`"args":{"cni":{"sysctl":{"net.ipv4.ip_forward":"1","net.ipv4.ip_forward":"0"}}}`), "", cniplugin.CodeInvalidConfig, "given twice"},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			_, err := parseConfig(tc.stdin, tc.args, "eth0")
			if err == nil {
				t.Fatal("accepted")
			}
			if cniplugin.Code(err) != tc.code || !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("got code %d %q, want code %d containing %q", cniplugin.Code(err), err, tc.code, tc.msg)
			}
		})
	}
}

// TestParseBaseIgnoresSettings: DEL and GC only need the data directory, so
// a sysctl an allowlist or a stricter plumb now refuses does not block
// cleaning up.
func TestTuningParseBaseIgnoresSettings(t *testing.T) {
	if _, _, dir, err := parseBase(conf(`"sysctl":{"kernel.x":"1"},"dataDir":"/tmp/t"`), ""); err != nil || dir != "/tmp/t" {
		t.Fatalf("%s %v", dir, err)
	}
}

func TestTuningAllowlist(t *testing.T) {
	dir := t.TempDir()
	list := dir + "/allowlist.conf"
	p := &Plugin{Allowlist: list}
	sc := []sysctl{{Key: "net.ipv4.conf.IFNAME.arp_filter"}}
	if err := p.checkAllowlist(sc); err != nil {
		t.Fatalf("no allowlist file must allow everything: %v", err)
	}
	writeFile(t, list, "\n^net\\.ipv4\\.conf\\.IFNAME\\.[a-z_]*$\n  \n^net\\.ipv4\\.ip_forward$\n")
	if err := p.checkAllowlist(sc); err != nil {
		t.Fatal(err)
	}
	err := p.checkAllowlist([]sysctl{{Key: "net.ipv4.tcp_syncookies"}})
	if cniplugin.Code(err) != cniplugin.CodeInvalidConfig || !strings.Contains(err.Error(), "not allowed") {
		t.Fatalf("key outside the allowlist: %v", err)
	}
	writeFile(t, list, "([\n")
	if err := p.checkAllowlist(sc); cniplugin.Code(err) != cniplugin.CodeInvalidConfig {
		t.Fatalf("broken allowlist: %v", err)
	}
}
