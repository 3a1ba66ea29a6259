package hostlocal

import (
	"strings"
	"testing"

	"github.com/plumbnet/plumb/internal/cniplugin"
)

// FuzzParseConfig: the IPAM config parser never panics, every rejection has
// a code, and what it accepts stays inside the data directory.
func FuzzParseConfig(f *testing.F) {
	f.Add([]byte(`{"cniVersion":"1.0.0","name":"n","ipam":{"type":"host-local","ranges":[[{"subnet":"10.0.0.0/24"}],[{"subnet":"fd00::/64"}]]}}`), "IP=10.0.0.5")
	f.Add([]byte(`{"cniVersion":"1.0.0","name":"n","ipam":{"type":"host-local","subnet":"10.0.0.0/30","rangeStart":"10.0.0.1","rangeEnd":"10.0.0.2","gateway":"10.0.0.1","dataDir":"/tmp/x/../y"}}`), "")
	f.Add([]byte(`{"name":"n","ipam":{"ranges":"x"}}`), "IgnoreUnknown=1;X=1")
	f.Add([]byte(`{"name":"n","ipam":{"ranges":[[{"subnet":"10.0.0.0/24"}]]},"runtimeConfig":{"ipRanges":[[{"subnet":"10.9.0.0/16"}]],"ips":["10.9.0.9/16"]},"args":{"cni":{"ips":["::1"]}}}`), "")
	f.Fuzz(func(t *testing.T, stdin []byte, args string) {
		c, err := parseConfig(stdin, args)
		if err != nil {
			if cniplugin.ToCNI(err).Code == 0 {
				t.Fatalf("rejection without a code: %v", err)
			}
			return
		}
		// "0.." is a file name; only a ".." element climbs out.
		if !strings.HasPrefix(c.DataDir, "/") || hasDotDot(c.DataDir) || validName(c.Network) != nil || len(c.RangeSets) == 0 {
			t.Fatalf("accepted an unsafe config: %+v", c)
		}
		matchRequested(c)
	})
}
