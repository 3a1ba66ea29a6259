package cniplugin

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/version"
)

func TestCodeAndMessageSurviveWrapping(t *testing.T) {
	inner := Errorf(CodeTryAgainLater, "lock network n1")
	err := fmt.Errorf("ADD c1: %w", inner)
	ce := ToCNI(err)
	if ce.Code != CodeTryAgainLater || ce.Msg != "ADD c1: lock network n1" {
		t.Fatalf("got %+v", ce)
	}
	// A delegated plugin's error keeps its code, and the context around it.
	deleg := fmt.Errorf("IPAM host-local ADD: %w", types.NewError(100, "no free address", "range 10.0.0.0/24"))
	ce = ToCNI(deleg)
	if ce.Code != 100 || !strings.HasPrefix(ce.Msg, "IPAM host-local ADD: no free address") || ce.Details != "range 10.0.0.0/24" {
		t.Fatalf("got %+v", ce)
	}
	if ToCNI(errors.New("boom")).Code != CodeInternal {
		t.Fatal("a plain error must be 999")
	}
	if WithCode(7, nil) != nil || ToCNI(nil) != nil {
		t.Fatal("nil must stay nil")
	}
}

func TestGuardTurnsPanicIntoError(t *testing.T) {
	f := guard("ADD", func(*skel.CmdArgs) error { var m map[string]int; m["x"] = 1; return nil })
	err := f(&skel.CmdArgs{})
	var te *types.Error
	if !errors.As(err, &te) || te.Code != CodeInternal || !strings.Contains(te.Msg, "ADD: internal error") {
		t.Fatalf("got %v", err)
	}
}

func TestDecodeCodes(t *testing.T) {
	var v struct {
		MTU int `json:"mtu"`
	}
	if err := Decode([]byte(`{"mtu":`), &v); Code(err) != CodeDecode {
		t.Fatalf("truncated JSON: %v", err)
	}
	err := Decode([]byte(`{"mtu":"x"}`), &v)
	if Code(err) != CodeInvalidConfig || !strings.Contains(err.Error(), `"mtu"`) {
		t.Fatalf("wrong type: %v", err)
	}
}

func TestParseArgs(t *testing.T) {
	var a Args
	if err := ParseArgs("IgnoreUnknown=1;K8S_POD_NAME=p;X=y;IP=10.0.0.5", &a); err != nil || a.IP != "10.0.0.5" || a.K8S_POD_NAME != "p" {
		t.Fatalf("%v %+v", err, a)
	}
	if err := ParseArgs("X=y", &Args{}); Code(err) != CodeInvalidEnv {
		t.Fatalf("unknown key without IgnoreUnknown: %v", err)
	}
}

func TestValidAttachmentsBothKeys(t *testing.T) {
	keep, err := ValidAttachments([]byte(`{"cni.dev/valid-attachments":[{"containerID":"a","ifname":"eth0"}],"cni.dev/attachments":[{"containerID":"b","ifname":"eth1"}]}`))
	if err != nil {
		t.Fatal(err)
	}
	if !keep[Attachment{ContainerID: "a", IfName: "eth0"}] || !keep[Attachment{ContainerID: "b", IfName: "eth1"}] || len(keep) != 2 {
		t.Fatalf("keep = %v", keep)
	}
}

func TestPrevResultFromOldVersion(t *testing.T) {
	conf := &types.PluginConf{CNIVersion: "0.4.0", RawPrevResult: map[string]any{
		"cniVersion": "0.4.0",
		"ips":        []any{map[string]any{"version": "4", "address": "10.0.0.5/24"}},
	}}
	res, err := PrevResult(conf)
	if err != nil || len(res.IPs) != 1 || res.IPs[0].Address.String() != "10.0.0.5/24" {
		t.Fatalf("%v %+v", err, res)
	}
	if res, err := PrevResult(&types.PluginConf{}); res != nil || err != nil {
		t.Fatal("no prevResult must be nil, nil")
	}
}

// TestAboutIsSemver: nerdctl parses everything after "CNI firewall plugin "
// as a semver and compares it with 1.7.1.
func TestAboutIsSemver(t *testing.T) {
	rest, ok := strings.CutPrefix(About("firewall"), "CNI firewall plugin ")
	if !ok {
		t.Fatalf("about line %q", About("firewall"))
	}
	maj, min, patch, err := version.ParseVersion(strings.SplitN(strings.TrimPrefix(rest, "v"), "+", 2)[0])
	if err != nil || maj != 1 || min < 7 || patch < 0 {
		t.Fatalf("about version %q: %d.%d.%d %v", rest, maj, min, patch, err)
	}
	for _, r := range strings.SplitN(rest, "+", 2)[1] {
		if !(r == '-' || r == '.' || r >= '0' && r <= '9' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z') {
			t.Fatalf("build metadata %q has %q, not allowed in semver", rest, r)
		}
	}
}
