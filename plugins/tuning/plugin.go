package main

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"regexp"
	"strings"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/plumbnet/plumb/internal/cniplugin"
	"github.com/plumbnet/plumb/internal/netns"
)

// defaultAllowlist is the reference plugin's optional sysctl allowlist: when
// the file exists, every sysctl key must match one of its regular
// expressions (one a line). Honouring it keeps a node's restriction in place
// when plumb replaces the reference plugin.
const defaultAllowlist = "/etc/cni/tuning/allowlist.conf"

// Plugin implements the tuning CNI plugin.
type Plugin struct {
	// Open gives the interface ifname in the namespace at a CNI_NETNS path;
	// it returns an error wrapping netns.ErrGone or netns.ErrNotNetNS when
	// the namespace is not usable.
	Open func(netnsPath, ifname string) (Target, error)
	// Allowlist is the path of the reference-format sysctl allowlist.
	Allowlist string
	// Now is the clock GC ages temp files by.
	Now func() time.Time
}

// New returns the tuning plugin wired to the real system.
func New() *Plugin {
	return &Plugin{Open: openTarget, Allowlist: defaultAllowlist, Now: time.Now}
}

// parse is parseConfig plus the allowlist, for ADD and CHECK.
func (p *Plugin) parse(args *skel.CmdArgs) (*Config, error) {
	c, err := parseConfig(args.StdinData, args.Args, args.IfName)
	if err != nil {
		return nil, err
	}
	if err := p.checkAllowlist(c.Sysctls); err != nil {
		return nil, err
	}
	return c, nil
}

// checkAllowlist applies the allowlist file when it exists, matching each
// key as written, as the reference plugin does.
func (p *Plugin) checkAllowlist(sysctls []sysctl) error {
	if p.Allowlist == "" || len(sysctls) == 0 {
		return nil
	}
	b, err := os.ReadFile(p.Allowlist)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return cniplugin.WithCode(cniplugin.CodeIO, fmt.Errorf("read sysctl allowlist: %w", err))
	}
	var allow []*regexp.Regexp
	for _, line := range strings.Split(string(b), "\n") {
		if line = strings.TrimSpace(line); line == "" {
			continue
		}
		re, err := regexp.Compile(line)
		if err != nil {
			return cniplugin.InvalidConfig("sysctl allowlist %s: %q: %w", p.Allowlist, line, err)
		}
		allow = append(allow, re)
	}
	for _, s := range sysctls {
		ok := false
		for _, re := range allow {
			if re.MatchString(s.Key) {
				ok = true
				break
			}
		}
		if !ok {
			return cniplugin.InvalidConfig("sysctl %q is not allowed by %s", s.Key, p.Allowlist)
		}
	}
	return nil
}

// open maps an unusable namespace to the invalid-netns error code.
func (p *Plugin) open(path, ifname string) (Target, error) {
	t, err := p.Open(path, ifname)
	if errors.Is(err, netns.ErrGone) || errors.Is(err, netns.ErrNotNetNS) || errors.Is(err, errInitNS) {
		return nil, cniplugin.WithCode(cniplugin.CodeInvalidNetNS, err)
	}
	return t, err
}

// requirePrev is prevResult, which ADD passes on and CHECK checks against.
func requirePrev(c *Config) (*current.Result, error) {
	prev, err := cniplugin.PrevResult(&c.PluginConf)
	if err != nil {
		return nil, err
	}
	if prev == nil {
		return nil, cniplugin.InvalidConfig("tuning must follow the plugin that creates the interface in a chain: the config has no prevResult")
	}
	return prev, nil
}

// Add saves the values it is about to replace, then applies the config.
// On failure it puts back what it changed and keeps no state.
func (p *Plugin) Add(args *skel.CmdArgs) (types.Result, error) {
	c, err := p.parse(args)
	if err != nil {
		return nil, err
	}
	prev, err := requirePrev(c)
	if err != nil {
		return nil, err
	}
	st := store{dir: c.DataDir}
	if _, err := st.path(args.ContainerID, args.IfName); err != nil {
		return nil, err
	}
	t, err := p.open(args.Netns, args.IfName)
	if err != nil {
		return nil, err
	}
	defer t.Close()
	if !c.Want.IsEmpty() {
		if err := p.apply(t, st, c, args); err != nil {
			return nil, err
		}
	}
	if c.Want.MAC != "" {
		for _, i := range prev.Interfaces {
			if i.Name == args.IfName && i.Sandbox != "" {
				i.Mac = c.Want.MAC
			}
		}
	}
	return prev, nil
}

func (p *Plugin) apply(t Target, st store, c *Config, args *skel.CmdArgs) error {
	orig, err := t.Read(c.Want)
	if err != nil {
		return readError(err, args)
	}
	old, err := st.load(args.ContainerID, args.IfName)
	if err != nil {
		return err
	}
	if old != nil && !old.owns(args.ContainerID, args.IfName) {
		return fmt.Errorf("saved state for %s/%s belongs to %s/%s (a container ID with '_')", args.ContainerID, args.IfName, old.ContainerID, old.IfName)
	}
	rec := &record{Settings: orig, Network: c.Name, ContainerID: args.ContainerID, IfName: args.IfName}
	if old != nil {
		// A repeated ADD: what the first one saved are the true originals.
		rec.Settings = mergeOriginals(old.Settings, orig)
	}
	if err := st.save(rec); err != nil {
		return err
	}
	if err := t.Write(c.Want); err != nil {
		t.Write(orig) // best effort: put back whatever was already changed
		if old != nil {
			st.save(old)
		} else {
			st.remove(args.ContainerID, args.IfName)
		}
		return err
	}
	return nil
}

// readError turns a failed read of the current values into a clear error:
// a sysctl missing in the container is a config error.
func readError(err error, args *skel.CmdArgs) error {
	switch {
	case errors.Is(err, errNoLink):
		return cniplugin.Errorf(cniplugin.CodeInvalidEnv, "CNI_IFNAME: %w", err)
	case errors.Is(err, fs.ErrNotExist):
		return cniplugin.InvalidConfig("%w in the container's network namespace %s: not namespaced on this kernel, or its interface or module is missing", err, args.Netns)
	}
	return err
}

// mergeOriginals keeps every value old saved and adds those only now read.
func mergeOriginals(old, now Settings) Settings {
	m := old
	if m.MAC == "" {
		m.MAC = now.MAC
	}
	if m.Promisc == nil {
		m.Promisc = now.Promisc
	}
	if m.MTU == 0 {
		m.MTU = now.MTU
	}
	if m.Allmulti == nil {
		m.Allmulti = now.Allmulti
	}
	if m.TxQLen == nil {
		m.TxQLen = now.TxQLen
	}
	if len(now.Sysctl) > 0 {
		s := make(map[string]string, len(old.Sysctl)+len(now.Sysctl))
		for k, v := range now.Sysctl {
			s[k] = v
		}
		for k, v := range old.Sysctl {
			s[k] = v
		}
		m.Sysctl = s
	}
	return m
}

// Del puts back the saved values while the interface (or, for sysctls, the
// namespace) is still there, then forgets them. Nothing saved, or the
// namespace gone, is success.
func (p *Plugin) Del(args *skel.CmdArgs) error {
	_, _, dir, err := parseBase(args.StdinData, args.Args)
	if err != nil {
		return err
	}
	st := store{dir: dir}
	rec, err := st.load(args.ContainerID, args.IfName)
	if err != nil || rec == nil {
		return err
	}
	if !rec.owns(args.ContainerID, args.IfName) {
		return nil // another attachment's file under a colliding name
	}
	if args.Netns != "" {
		if err := p.restore(args, rec.Settings); err != nil {
			return err // keep the record: a retried DEL can still restore
		}
	}
	return st.remove(args.ContainerID, args.IfName)
}

func (p *Plugin) restore(args *skel.CmdArgs, saved Settings) error {
	t, err := p.Open(args.Netns, args.IfName)
	if errors.Is(err, netns.ErrGone) || errors.Is(err, netns.ErrNotNetNS) {
		return nil
	}
	if err != nil {
		return err
	}
	defer t.Close()
	var errs []error
	if saved.HasLink() {
		if err := t.Write(saved.linkOnly()); err != nil && !errors.Is(err, errNoLink) {
			errs = append(errs, fmt.Errorf("restore %s: %w", args.IfName, err))
		}
	}
	for _, key := range sortedKeys(saved.Sysctl) {
		if err := checkPath(key); err != nil {
			errs = append(errs, fmt.Errorf("saved sysctl %q: %w", key, err))
			continue
		}
		err := t.Write(Settings{Sysctl: map[string]string{key: saved.Sysctl[key]}})
		if err != nil && !errors.Is(err, fs.ErrNotExist) { // e.g. its interface is gone
			errs = append(errs, fmt.Errorf("restore: %w", err))
		}
	}
	return errors.Join(errs...)
}

// Check compares the interface and sysctls with the config.
func (p *Plugin) Check(args *skel.CmdArgs) error {
	c, err := p.parse(args)
	if err != nil {
		return err
	}
	if _, err := requirePrev(c); err != nil {
		return err
	}
	t, err := p.open(args.Netns, args.IfName)
	if err != nil {
		return err
	}
	defer t.Close()
	got, err := t.Read(c.Want)
	if err != nil {
		return readError(err, args)
	}
	return diff(c, got, args)
}

// diff reports the first value that differs from the config.
func diff(c *Config, got Settings, args *skel.CmdArgs) error {
	w := c.Want
	in := fmt.Sprintf("%s in %s", args.IfName, args.Netns)
	switch {
	case w.MAC != "" && !strings.EqualFold(got.MAC, w.MAC):
		return fmt.Errorf("mac of %s is %s, config wants %s", in, got.MAC, w.MAC)
	case w.MTU != 0 && got.MTU != w.MTU:
		return fmt.Errorf("mtu of %s is %d, config wants %d", in, got.MTU, w.MTU)
	case w.Promisc != nil && *got.Promisc != *w.Promisc:
		return fmt.Errorf("promisc (promiscuous mode) of %s is %v, config wants %v", in, *got.Promisc, *w.Promisc)
	case w.Allmulti != nil && *got.Allmulti != *w.Allmulti:
		return fmt.Errorf("allmulti (all-multicast mode) of %s is %v, config wants %v", in, *got.Allmulti, *w.Allmulti)
	case w.TxQLen != nil && *got.TxQLen != *w.TxQLen:
		return fmt.Errorf("txQLen of %s is %d, config wants %d", in, *got.TxQLen, *w.TxQLen)
	}
	for _, s := range c.Sysctls {
		have, ok := got.Sysctl[s.Path]
		if !ok {
			continue // write-only
		}
		// The kernel prints multi-value sysctls with tabs ("32768\t60999").
		if strings.Join(strings.Fields(have), " ") != strings.Join(strings.Fields(s.Value), " ") {
			return fmt.Errorf("sysctl %s in %s is %q, config wants %q", s.Key, args.Netns, have, s.Value)
		}
	}
	return nil
}

// GC forgets the saved values of this network's attachments that the
// runtime no longer lists.
func (p *Plugin) GC(args *skel.CmdArgs) error {
	nc, _, dir, err := parseBase(args.StdinData, args.Args)
	if err != nil {
		return err
	}
	keep, err := cniplugin.ValidAttachments(args.StdinData)
	if err != nil {
		return err
	}
	return store{dir: dir}.gc(nc.Name, keep, p.Now())
}

// Status: tuning needs nothing that can run out.
func (p *Plugin) Status(args *skel.CmdArgs) error {
	_, _, _, err := parseBase(args.StdinData, args.Args)
	return err
}
