// Package cniplugin is the edge every plumb plugin shares: skel wiring for all
// CNI verbs, result conversion to the caller's spec version, CNI_ARGS and
// prevResult parsing, and turning errors (and panics) into CNI error JSON.
package cniplugin

import (
	"encoding/json"
	"fmt"
	"os"
	"strings"

	"github.com/containernetworking/cni/pkg/ns"
	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/plumbnet/plumb/internal/reaper"
)

// Version is plumb's release, set with -ldflags "-X ...cniplugin.Version=...".
var Version = "v0.1.0"

// CompatVersion is the reference plugins' release whose behaviour plumb's
// plugins offer. Runtimes read it from the about line (nerdctl enables the
// firewall's "isolated" policy only for >= v1.7.1), so the line is
// "CNI <type> plugin v1.9.1+plumb-0.1.0": plumb's own release rides in the
// semver build metadata, which version comparisons ignore.
const CompatVersion = "v1.9.1"

// About is the line a plugin prints on stderr when run without CNI_COMMAND.
func About(name string) string {
	return fmt.Sprintf("CNI %s plugin %s+plumb-%s", name, CompatVersion, strings.TrimPrefix(Version, "v"))
}

// SupportedVersions are the spec versions every plumb plugin accepts and can
// answer in.
var SupportedVersions = version.PluginSupports("0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")

// Plugin is one CNI plugin. Add returns the result in any version; the edge
// converts it to the version the config asks for.
type Plugin interface {
	Add(args *skel.CmdArgs) (types.Result, error)
	Del(args *skel.CmdArgs) error
	Check(args *skel.CmdArgs) error
	GC(args *skel.CmdArgs) error
	Status(args *skel.CmdArgs) error
}

// Main runs p as the plugin binary name and exits.
func Main(name string, p Plugin) {
	reaper.Main() // a reaper started by this plugin's DEL does its job and exits
	reaper.Enable()
	if e := skel.PluginMainFuncsWithError(Funcs(p), SupportedVersions, About(name)); e != nil {
		if err := e.Print(); err != nil {
			fmt.Fprintf(os.Stderr, "%s: write error: %v\n", name, err)
		}
		os.Exit(1)
	}
}

// Funcs adapts p to skel: it prints ADD's result in the config's version,
// refuses to run ADD in the plugin's own namespace before changing anything,
// and converts errors and panics into *types.Error with the full message.
func Funcs(p Plugin) skel.CNIFuncs {
	return skel.CNIFuncs{
		Add: guard("ADD", func(args *skel.CmdArgs) error {
			if err := checkForeignNetNS(args); err != nil {
				return err
			}
			res, err := p.Add(args)
			if err != nil {
				return err
			}
			return PrintResult(res, args.StdinData)
		}),
		Del: guard("DEL", func(args *skel.CmdArgs) error {
			// What only waits for the kernel is left to a reaper.
			reaper.Begin()
			defer reaper.Finish()
			return p.Del(args)
		}),
		Check:  guard("CHECK", p.Check),
		GC:     guard("GC", p.GC),
		Status: guard("STATUS", p.Status),
	}
}

// Length limits beyond skel's character checks: owner tags (veth aliases
// "plumb/<network>/<container ID>/<ifname>", rule comments) must fit the
// kernel's 255-byte fields whole.
const (
	MaxContainerIDLen = 128
	MaxNetworkNameLen = 100
)

// checkLimits rejects overlong identifiers before any plugin code sees them.
func checkLimits(args *skel.CmdArgs) error {
	if len(args.ContainerID) > MaxContainerIDLen {
		return Errorf(CodeInvalidEnv, "CNI_CONTAINERID is %d bytes, more than %d", len(args.ContainerID), MaxContainerIDLen)
	}
	var conf struct {
		Name string `json:"name"`
	}
	if json.Unmarshal(args.StdinData, &conf) == nil && len(conf.Name) > MaxNetworkNameLen {
		return InvalidConfig("network name is %d bytes, more than %d", len(conf.Name), MaxNetworkNameLen)
	}
	return nil
}

// guard converts errors to CNI errors and a panic into error 999 without a
// Go stack on stdout.
func guard(verb string, fn func(*skel.CmdArgs) error) func(*skel.CmdArgs) error {
	return func(args *skel.CmdArgs) (err error) {
		defer func() {
			if r := recover(); r != nil {
				err = types.NewError(CodeInternal, fmt.Sprintf("%s: internal error: %v", verb, r), "")
			}
		}()
		if err := checkLimits(args); err != nil {
			return ToCNI(err)
		}
		if err := fn(args); err != nil {
			return ToCNI(err)
		}
		return nil
	}
}

// checkForeignNetNS rejects a CNI_NETNS that is the plugin's own namespace:
// skel checks this only after ADD ran, when the damage is done.
func checkForeignNetNS(args *skel.CmdArgs) error {
	if o := strings.ToUpper(args.NetnsOverride); o == "TRUE" || o == "1" || args.Netns == "" {
		return nil
	}
	same, err := ns.CheckNetNS(args.Netns)
	if err != nil {
		return err
	}
	if same {
		return Errorf(CodeInvalidNetNS, "CNI_NETNS %s is the plugin's own network namespace", args.Netns)
	}
	return nil
}

// PrintResult writes res to stdout converted to the cniVersion of stdin.
func PrintResult(res types.Result, stdin []byte) error {
	v, err := (&version.ConfigDecoder{}).Decode(stdin)
	if err != nil {
		return WithCode(CodeDecode, fmt.Errorf("read cniVersion: %w", err))
	}
	if err := types.PrintResult(res, v); err != nil {
		return WithCode(CodeIncompatibleVersion, fmt.Errorf("convert result to version %s: %w", v, err))
	}
	return nil
}

// Call runs one verb of a plugin inside another plugin's process, with the
// checks and error conversion its own binary would apply: errors and
// panics come back as *types.Error, as from an exec'd plugin.
func Call(verb string, fn func(*skel.CmdArgs) error, args *skel.CmdArgs) error {
	return guard(verb, fn)(args)
}
