package main

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"

	"github.com/plumbnet/plumb/internal/cniplugin"
)

// confJSON is a portmap config with extra fields merged in.
func confJSON(t testing.TB, extra map[string]any) []byte {
	t.Helper()
	c := map[string]any{"cniVersion": "1.0.0", "name": "net1", "type": "portmap"}
	for k, v := range extra {
		c[k] = v
	}
	b, err := json.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func mappings(entries ...map[string]any) map[string]any {
	return map[string]any{"portMappings": entries}
}

func TestConfigDefaults(t *testing.T) {
	c, err := parseConfig(confJSON(t, nil), "")
	if err != nil {
		t.Fatal(err)
	}
	if !c.SNAT || c.MasqAll || c.MarkBit != 13 || c.Backend != "nftables" || !c.BackendDefaulted || c.SetMarkChain != "" {
		t.Fatalf("defaults: %+v", c)
	}
	if m, err := c.Mappings(); err != nil || len(m) != 0 {
		t.Fatalf("Mappings = %v, %v", m, err)
	}
}

func TestConfigFields(t *testing.T) {
	for _, tc := range []struct {
		name  string
		extra map[string]any
		check func(*Config) bool
	}{
		{"snat false", map[string]any{"snat": false}, func(c *Config) bool { return !c.SNAT }},
		{"masqAll", map[string]any{"masqAll": true}, func(c *Config) bool { return c.MasqAll }},
		{"markMasqBit 0", map[string]any{"markMasqBit": 0}, func(c *Config) bool { return c.MarkBit == 0 }},
		{"markMasqBit 31", map[string]any{"markMasqBit": 31}, func(c *Config) bool { return c.MarkBit == 31 }},
		{"iptables", map[string]any{"backend": "iptables"}, func(c *Config) bool { return c.Backend == "iptables" && !c.BackendDefaulted }},
		{"external mark chain picks iptables", map[string]any{"externalSetMarkChain": "KUBE-MARK-MASQ"},
			func(c *Config) bool { return c.Backend == "iptables" && c.SetMarkChain == "KUBE-MARK-MASQ" }},
		{"conditions pick iptables", map[string]any{"conditionsV4": []string{"-s", "10.0.0.0/8"}, "conditionsV6": []string{"!", "-i", "eth1"}},
			func(c *Config) bool {
				return c.Backend == "iptables" && reflect.DeepEqual(c.ConditionsV4, []string{"-s", "10.0.0.0/8"}) && len(c.ConditionsV6) == 3
			}},
		{"empty conditions are none", map[string]any{"conditionsV4": []string{""}}, func(c *Config) bool { return c.Backend == "nftables" && c.ConditionsV4 == nil }},
	} {
		c, err := parseConfig(confJSON(t, tc.extra), "")
		if err != nil {
			t.Errorf("%s: %v", tc.name, err)
			continue
		}
		if !tc.check(c) {
			t.Errorf("%s: got %+v", tc.name, c)
		}
	}
}

// TestConfigErrors: every bad input is a CNI error with its code and a
// message naming what is wrong.
func TestConfigErrors(t *testing.T) {
	for _, tc := range []struct {
		name    string
		stdin   []byte
		args    string
		code    uint
		mention string
	}{
		{"malformed JSON", []byte(`{"cniVersion":`), "", cniplugin.CodeDecode, "decode"},
		{"wrong type", confJSON(t, map[string]any{"markMasqBit": "13"}), "", cniplugin.CodeInvalidConfig, "markMasqBit"},
		{"mark bit 32", confJSON(t, map[string]any{"markMasqBit": 32}), "", cniplugin.CodeInvalidConfig, "0..31"},
		{"mark bit -1", confJSON(t, map[string]any{"markMasqBit": -1}), "", cniplugin.CodeInvalidConfig, "0..31"},
		{"mark bit and chain", confJSON(t, map[string]any{"markMasqBit": 1, "externalSetMarkChain": "X"}), "", cniplugin.CodeInvalidConfig, "cannot both"},
		{"bad chain name", confJSON(t, map[string]any{"externalSetMarkChain": "a b"}), "", cniplugin.CodeInvalidConfig, "chain name"},
		{"unknown backend", confJSON(t, map[string]any{"backend": "ebpf"}), "", cniplugin.CodeInvalidConfig, `"ebpf"`},
		{"nft with conditions", confJSON(t, map[string]any{"backend": "nftables", "conditionsV4": []string{"-s", "10.0.0.0/8"}}), "", cniplugin.CodeInvalidConfig,
			"conditionsV4 is not supported with the nftables backend"},
		{"nft with mark chain", confJSON(t, map[string]any{"backend": "nftables", "externalSetMarkChain": "X"}), "", cniplugin.CodeInvalidConfig,
			"externalSetMarkChain is not supported with the nftables backend"},
		{"nft-style conditions", confJSON(t, map[string]any{"conditionsV6": []string{"ip6 saddr ::1"}}), "", cniplugin.CodeInvalidConfig, "nftables expressions"},
		{"quote in a condition", confJSON(t, map[string]any{"conditionsV4": []string{"-m", `"x`}}), "", cniplugin.CodeInvalidConfig, "quote"},
		{"unknown CNI_ARGS key", confJSON(t, nil), "FOO=bar", cniplugin.CodeInvalidEnv, "CNI_ARGS"},
	} {
		_, err := parseConfig(tc.stdin, tc.args)
		if cniplugin.Code(err) != tc.code || !strings.Contains(err.Error(), tc.mention) {
			t.Errorf("%s: got %v (code %d), want code %d mentioning %q", tc.name, err, cniplugin.Code(err), tc.code, tc.mention)
		}
	}
}

func TestMappings(t *testing.T) {
	c, err := parseConfig(confJSON(t, map[string]any{"runtimeConfig": mappings(
		map[string]any{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"},
		map[string]any{"hostPort": 53, "containerPort": 53, "protocol": "UDP", "hostIP": "127.0.0.1"},
		map[string]any{"hostPort": 9, "containerPort": 9, "protocol": "sctp", "hostIP": "::"},
		map[string]any{"hostPort": 65535, "containerPort": 1},
	)}), "")
	if err != nil {
		t.Fatal(err)
	}
	got, err := c.Mappings()
	if err != nil {
		t.Fatal(err)
	}
	want := "tcp <nil>:8080->80 udp 127.0.0.1:53->53 sctp :::9->9 tcp <nil>:65535->1"
	var parts []string
	for _, m := range got {
		parts = append(parts, m.Protocol+" "+m.HostIP.String()+":"+itoa(m.HostPort)+"->"+itoa(m.ContainerPort))
	}
	if strings.Join(parts, " ") != want {
		t.Fatalf("Mappings:\n got %s\nwant %s", strings.Join(parts, " "), want)
	}
}

func itoa(p uint16) string { b, _ := json.Marshal(p); return string(b) }

func TestMappingErrors(t *testing.T) {
	for _, tc := range []struct {
		name    string
		entry   map[string]any
		mention string
	}{
		{"host port 0", map[string]any{"hostPort": 0, "containerPort": 80}, "hostPort 0 is not within 1..65535"},
		{"host port 65536", map[string]any{"hostPort": 65536, "containerPort": 80}, "hostPort 65536"},
		{"negative host port", map[string]any{"hostPort": -1, "containerPort": 80}, "hostPort -1"},
		{"container port 0", map[string]any{"hostPort": 80, "containerPort": 0}, "containerPort 0"},
		{"container port 70000", map[string]any{"hostPort": 80, "containerPort": 70000}, "containerPort 70000"},
		{"unknown protocol", map[string]any{"hostPort": 80, "containerPort": 80, "protocol": "icmp"}, `protocol "icmp"`},
		{"host IP not an IP", map[string]any{"hostPort": 80, "containerPort": 80, "hostIP": "localhost"}, `hostIP "localhost" is not an IP address`},
		{"multicast host IP", map[string]any{"hostPort": 80, "containerPort": 80, "hostIP": "224.0.0.1"}, "not a unicast"},
	} {
		c, err := parseConfig(confJSON(t, map[string]any{"runtimeConfig": mappings(
			map[string]any{"hostPort": 1, "containerPort": 1}, tc.entry)}), "")
		if err != nil {
			t.Fatalf("%s: parseConfig: %v", tc.name, err)
		}
		_, err = c.Mappings()
		if cniplugin.Code(err) != cniplugin.CodeInvalidConfig || !strings.Contains(err.Error(), tc.mention) ||
			!strings.Contains(err.Error(), "portMappings[1]") {
			t.Errorf("%s: got %v, want code 7 naming portMappings[1] and %q", tc.name, err, tc.mention)
		}
	}
	// A port that is not a number is a type error.
	_, err := parseConfig(confJSON(t, map[string]any{"runtimeConfig": mappings(map[string]any{"hostPort": "80"})}), "")
	if cniplugin.Code(err) != cniplugin.CodeInvalidConfig {
		t.Fatalf("string port: %v", err)
	}
}
