// Package hostlocal is plumb's host-local IPAM plugin: it reserves
// addresses from configured ranges in files on this host, in the same
// on-disk format as the reference host-local. The host-local binary runs
// it; the bridge plugin runs it in its own process when the host-local on
// CNI_PATH is this very build (see plugins/bridge).
package hostlocal

import (
	"context"
	"errors"
	"fmt"
	"net"
	"syscall"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/plumbnet/plumb/internal/cniplugin"
	"github.com/plumbnet/plumb/internal/crashpoint"
	"github.com/plumbnet/plumb/ipam/allocator"
	"github.com/plumbnet/plumb/ipam/store"
)

// Plugin implements host-local over a reservation store.
type Plugin struct {
	// OpenStore opens the reservations of one network.
	OpenStore func(dataDir, network string) (store.Store, error)
}

// New returns the plugin over the on-disk store.
func New() *Plugin { return &Plugin{OpenStore: openDisk} }

func openDisk(dataDir, network string) (store.Store, error) {
	return store.NewDisk(dataDir, network)
}

// session is an open, locked store for one call.
type session struct {
	st store.Store
}

// lock opens the network's store and takes its lock, giving up after the
// configured timeout with "try again later".
func (p *Plugin) lock(c *Config) (*session, error) {
	st, err := p.OpenStore(c.DataDir, c.Network)
	if err != nil {
		return nil, cniplugin.WithCode(cniplugin.CodeIO, fmt.Errorf("open store for network %s in %s: %w", c.Network, c.DataDir, err))
	}
	ctx, cancel := context.WithTimeout(context.Background(), c.LockTimeout)
	defer cancel()
	if err := st.Lock(ctx); err != nil {
		st.Close()
		if errors.Is(err, store.ErrLockTimeout) {
			return nil, cniplugin.WithCode(cniplugin.CodeTryAgainLater, fmt.Errorf("lock network %s after %s: %w", c.Network, c.LockTimeout, err))
		}
		return nil, cniplugin.WithCode(cniplugin.CodeIO, fmt.Errorf("lock network %s: %w", c.Network, err))
	}
	return &session{st: st}, nil
}

func (s *session) close() {
	s.st.Unlock()
	s.st.Close()
}

func owner(args *skel.CmdArgs) store.Owner {
	return store.Owner{ContainerID: args.ContainerID, IfName: args.IfName}
}

// Add reserves one address per range set, all or nothing.
func (p *Plugin) Add(args *skel.CmdArgs) (types.Result, error) {
	c, err := parseConfig(args.StdinData, args.Args)
	if err != nil {
		return nil, err
	}
	requested, err := matchRequested(c)
	if err != nil {
		return nil, err
	}
	res := &current.Result{CNIVersion: current.ImplementedSpecVersion, Routes: c.Routes}
	if c.ResolvConf != "" {
		dns, err := readResolvConf(c.ResolvConf)
		if err != nil {
			return nil, cniplugin.WithCode(cniplugin.CodeInvalidConfig, err)
		}
		res.DNS = *dns
	}

	s, err := p.lock(c)
	if err != nil {
		return nil, err
	}
	defer s.close()
	crashpoint.Here("host-local.add.locked")
	o := owner(args)
	for i, set := range c.RangeSets {
		ipc, err := allocator.New(set, s.st, i).Get(o, requested[i])
		if err != nil {
			// Undo only what this call reserved: an earlier reservation of the
			// same owner (duplicate ADD) stays.
			for _, got := range res.IPs {
				s.st.Release(got.Address.IP)
			}
			return nil, allocError(err, i, set)
		}
		res.IPs = append(res.IPs, ipc)
		crashpoint.Here(fmt.Sprintf("host-local.add.reserved.%d", i))
	}
	return res, nil
}

// matchRequested assigns each requested address to the range set holding it.
func matchRequested(c *Config) ([]net.IP, error) {
	out := make([]net.IP, len(c.RangeSets))
	for _, ip := range c.Requested {
		found := false
		for i, set := range c.RangeSets {
			if _, ok := set.Contains(ip); ok {
				if out[i] != nil {
					return nil, cniplugin.Errorf(cniplugin.CodeAddressUnavailable, "requested IPs %s and %s are both in range set %d (%s): one address per range set", out[i], ip, i, set.String())
				}
				out[i], found = ip, true
				break
			}
		}
		if !found {
			return nil, cniplugin.Errorf(cniplugin.CodeAddressUnavailable, "requested IP %s is in none of the configured ranges", ip)
		}
	}
	return out, nil
}

func allocError(err error, i int, set allocator.RangeSet) error {
	err = fmt.Errorf("allocate from range set %d (%s): %w", i, set.String(), err)
	switch {
	case errors.Is(err, allocator.ErrExhausted):
		return cniplugin.WithCode(cniplugin.CodeExhausted, err)
	case errors.Is(err, allocator.ErrRequestedTaken), errors.Is(err, allocator.ErrRequestedOutside):
		return cniplugin.WithCode(cniplugin.CodeAddressUnavailable, err)
	}
	return ioError(err)
}

// ioError marks failures of the state directory (full, read-only, no
// permission) as I/O errors (5), so runtimes can tell them from bugs.
func ioError(err error) error {
	var errno syscall.Errno
	if errors.As(err, &errno) {
		return cniplugin.WithCode(cniplugin.CodeIO, err)
	}
	return err
}

// Del releases the pair's reservations; an unknown pair is success.
func (p *Plugin) Del(args *skel.CmdArgs) error {
	c, err := parseConfig(args.StdinData, args.Args)
	if err != nil {
		return err
	}
	s, err := p.lock(c)
	if err != nil {
		return err
	}
	defer s.close()
	crashpoint.Here("host-local.del.locked")
	if _, err := s.st.ReleaseByOwner(owner(args)); err != nil {
		return ioError(fmt.Errorf("release addresses of %s/%s: %w", args.ContainerID, args.IfName, err))
	}
	return nil
}

// Check verifies that the pair holds exactly the addresses prevResult lists
// inside this plugin's ranges.
func (p *Plugin) Check(args *skel.CmdArgs) error {
	c, err := parseConfig(args.StdinData, args.Args)
	if err != nil {
		return err
	}
	prev, err := cniplugin.PrevResult(c.Prev)
	if err != nil {
		return err
	}
	s, err := p.lock(c)
	if err != nil {
		return err
	}
	held, err := s.st.GetByOwner(owner(args))
	s.close()
	if err != nil {
		return fmt.Errorf("read reservations of %s/%s: %w", args.ContainerID, args.IfName, err)
	}
	if len(held) == 0 {
		return fmt.Errorf("no address is reserved for container %s interface %s in network %s", args.ContainerID, args.IfName, c.Network)
	}
	if prev == nil {
		return nil
	}
	want := map[string]bool{}
	for _, ipc := range prev.IPs {
		for _, set := range c.RangeSets {
			if _, ok := set.Contains(ipc.Address.IP); ok {
				want[canonical(ipc.Address.IP).String()] = true
			}
		}
	}
	for _, ip := range held {
		if !want[ip.String()] {
			return fmt.Errorf("container %s interface %s holds %s, which prevResult does not list", args.ContainerID, args.IfName, ip)
		}
		delete(want, ip.String())
	}
	for ip := range want {
		return fmt.Errorf("prevResult lists %s for container %s interface %s, but it is not reserved for them", ip, args.ContainerID, args.IfName)
	}
	return nil
}

// GC releases every reservation whose attachment the runtime no longer knows.
func (p *Plugin) GC(args *skel.CmdArgs) error {
	c, err := parseConfig(args.StdinData, args.Args)
	if err != nil {
		return err
	}
	keep, err := cniplugin.ValidAttachments(args.StdinData)
	if err != nil {
		return err
	}
	// Files of old reference versions name only the container.
	keepID := map[string]bool{}
	for a := range keep {
		keepID[a.ContainerID] = true
	}
	s, err := p.lock(c)
	if err != nil {
		return err
	}
	defer s.close()
	all, err := s.st.List()
	if err != nil {
		return fmt.Errorf("list reservations of network %s: %w", c.Network, err)
	}
	var errs []error
	for _, r := range all {
		if keep[cniplugin.Attachment{ContainerID: r.Owner.ContainerID, IfName: r.Owner.IfName}] ||
			(r.Owner.IfName == "" && keepID[r.Owner.ContainerID]) {
			continue
		}
		if err := s.st.Release(r.IP); err != nil {
			errs = append(errs, fmt.Errorf("release %s of %s/%s: %w", r.IP, r.Owner.ContainerID, r.Owner.IfName, err))
		}
	}
	return errors.Join(errs...)
}

// Status reports "not available" (50) when a range set has no free address,
// since every ADD would then fail, or when the store cannot be used.
func (p *Plugin) Status(args *skel.CmdArgs) error {
	c, err := parseConfig(args.StdinData, args.Args)
	if err != nil {
		return err
	}
	s, err := p.lock(c)
	if err != nil {
		if cniplugin.Code(err) == cniplugin.CodeIO {
			return cniplugin.WithCode(cniplugin.CodeNotAvailable, err)
		}
		return err
	}
	defer s.close()
	for i, set := range c.RangeSets {
		free, err := allocator.New(set, s.st, i).HasFree()
		if err != nil {
			return fmt.Errorf("count free addresses of range set %d: %w", i, err)
		}
		if !free {
			return cniplugin.Errorf(cniplugin.CodeNotAvailable, "range set %d (%s) of network %s has no free address", i, set.String(), c.Network)
		}
	}
	return nil
}
