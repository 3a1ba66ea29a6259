package cniplugin

import (
	"testing"

	"github.com/containernetworking/cni/pkg/types"
)

// FuzzArgsAndPrevResult: CNI_ARGS, prevResult and GC attachment parsing
// never panic and reject with a code.
func FuzzArgsAndPrevResult(f *testing.F) {
	f.Add("IgnoreUnknown=1;K8S_POD_NAME=a;IP=10.0.0.1", []byte(`{"cniVersion":"0.4.0","prevResult":{"cniVersion":"0.4.0","ips":[{"version":"4","address":"10.0.0.5/24"}]}}`))
	f.Add("A", []byte(`{"cniVersion":"1.0.0","prevResult":{"interfaces":[{"name":"x"}],"ips":[{"address":"fd00::1/64","interface":7}]}}`))
	f.Add("", []byte(`{"cni.dev/valid-attachments":[{"containerID":"a","ifname":"b"}]}`))
	f.Fuzz(func(t *testing.T, args string, stdin []byte) {
		if err := ParseArgs(args, &Args{}); err != nil && Code(err) != CodeInvalidEnv {
			t.Fatalf("CNI_ARGS rejection with code %d", Code(err))
		}
		var conf types.PluginConf
		if err := Decode(stdin, &conf); err != nil {
			return
		}
		if _, err := PrevResult(&conf); err != nil && ToCNI(err).Code == 0 {
			t.Fatalf("prevResult rejection without a code: %v", err)
		}
		ValidAttachments(stdin)
	})
}
