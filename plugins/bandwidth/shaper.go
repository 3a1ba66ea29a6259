package main

import (
	"errors"
	"fmt"
	"net"

	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/plumbnet/plumb/internal/link"
	"github.com/plumbnet/plumb/internal/netns"
)

// The tc objects plumb puts on a host veth: a tbf as root qdisc (traffic to
// the container leaves the host through it) and an ingress qdisc whose one
// filter redirects everything the container sends to the attachment's ifb,
// whose own root tbf shapes it.
var (
	rootHandle    = netlink.MakeHandle(1, 0)
	ingressHandle = netlink.MakeHandle(0xffff, 0)
)

// redirectPrio is the redirect filter's priority on the ingress qdisc.
const redirectPrio = 1

// host is netlink access to the plugin's own namespace, where the host veth
// and the ifb live.
type host struct{ *link.NS }

func openHost() (host, error) {
	hns, err := netns.Current()
	if err != nil {
		return host{}, err
	}
	defer hns.Close()
	n, err := link.Open(hns, "host")
	return host{n}, err
}

// hostVeth finds the host end of the container interface's veth pair: the
// link at the container end's peer index, which must point back at it. When
// prev is given, it must list the link as a host interface too.
func (h host) hostVeth(cont *link.NS, ifname string, prev *current.Result) (netlink.Link, error) {
	cl, err := cont.Get(ifname)
	if err != nil {
		return nil, err
	}
	if cl == nil {
		return nil, fmt.Errorf("interface %s not found in %s", ifname, cont.Name)
	}
	if _, ok := cl.(*netlink.Veth); !ok {
		return nil, fmt.Errorf("%s in %s is a %s: bandwidth shapes the host end of a veth pair", ifname, cont.Name, cl.Type())
	}
	hl, err := h.H.LinkByIndex(cl.Attrs().ParentIndex)
	if err == nil {
		if _, ok := hl.(*netlink.Veth); !ok || hl.Attrs().ParentIndex != cl.Attrs().Index {
			err = errors.New("not its peer")
		}
	}
	if err != nil {
		return nil, fmt.Errorf("the veth peer of %s in %s is not in the plugin's namespace: %w", ifname, cont.Name, err)
	}
	if prev != nil && !listed(prev, hl.Attrs().Name) {
		return nil, fmt.Errorf("host veth %s of %s is not among prevResult's host interfaces", hl.Attrs().Name, ifname)
	}
	return hl, nil
}

func listed(prev *current.Result, name string) bool {
	for _, i := range prev.Interfaces {
		if i.Sandbox == "" && i.Name == name {
			return true
		}
	}
	return false
}

// setRootTbf makes (or replaces) the root qdisc of l a tbf with p.
func (h host) setRootTbf(l netlink.Link, p tbfParams) error {
	q := &netlink.Tbf{
		QdiscAttrs: netlink.QdiscAttrs{LinkIndex: l.Attrs().Index, Handle: rootHandle, Parent: netlink.HANDLE_ROOT},
		Rate:       p.Rate, Limit: p.Limit, Buffer: p.Buffer,
	}
	if err := h.H.QdiscReplace(q); err != nil {
		return fmt.Errorf("set tbf (%d bytes/s) on %s: %w", p.Rate, l.Attrs().Name, err)
	}
	return nil
}

// qdiscs lists l's qdiscs; a link that vanished has none.
func (h host) qdiscs(l netlink.Link) ([]netlink.Qdisc, error) {
	qs, err := h.H.QdiscList(l)
	if link.IsNotFound(err) {
		return nil, nil
	}
	if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
		return nil, fmt.Errorf("list qdiscs of %s: %w", l.Attrs().Name, err)
	}
	return qs, nil
}

// rootTbf is plumb's tbf at the root of l, nil when there is none.
func (h host) rootTbf(l netlink.Link) (*netlink.Tbf, error) {
	qs, err := h.qdiscs(l)
	for _, q := range qs {
		if t, ok := q.(*netlink.Tbf); ok && t.Parent == netlink.HANDLE_ROOT && t.Handle == rootHandle {
			return t, err
		}
	}
	return nil, err
}

func (h host) hasIngress(l netlink.Link) (bool, error) {
	qs, err := h.qdiscs(l)
	for _, q := range qs {
		if _, ok := q.(*netlink.Ingress); ok {
			return true, err
		}
	}
	return false, err
}

// redirect sends everything arriving on veth (what the container sends) to
// ifb, through an ingress qdisc on veth.
func (h host) redirect(veth, ifb netlink.Link) error {
	has, err := h.hasIngress(veth)
	if err != nil {
		return err
	}
	if !has {
		q := &netlink.Ingress{QdiscAttrs: netlink.QdiscAttrs{LinkIndex: veth.Attrs().Index, Handle: ingressHandle, Parent: netlink.HANDLE_INGRESS}}
		if err := h.H.QdiscAdd(q); err != nil {
			return fmt.Errorf("add ingress qdisc to %s: %w", veth.Attrs().Name, err)
		}
	}
	f := &netlink.U32{ // no selector: matches every packet
		FilterAttrs: netlink.FilterAttrs{LinkIndex: veth.Attrs().Index, Parent: ingressHandle, Priority: redirectPrio, Protocol: unix.ETH_P_ALL},
		Actions:     []netlink.Action{netlink.NewMirredAction(ifb.Attrs().Index)},
	}
	if err := h.H.FilterAdd(f); err != nil {
		return fmt.Errorf("redirect %s to %s: %w", veth.Attrs().Name, ifb.Attrs().Name, err)
	}
	return nil
}

// redirects splits the filters on l's ingress into those redirecting to
// ifindex or to a device that is gone (mirred reports index 0 then) and the
// rest.
func (h host) redirects(l netlink.Link, ifindex int) (to, others []netlink.Filter, err error) {
	fs, err := h.H.FilterList(l, ingressHandle)
	if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
		if link.IsNotFound(err) || errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOENT) {
			return nil, nil, nil // no ingress qdisc, or no link
		}
		return nil, nil, fmt.Errorf("list ingress filters of %s: %w", l.Attrs().Name, err)
	}
	for _, f := range fs {
		if u, ok := f.(*netlink.U32); ok && len(u.Actions) == 1 {
			if m, ok := u.Actions[0].(*netlink.MirredAction); ok && m.MirredAction == netlink.TCA_EGRESS_REDIR && (m.Ifindex == ifindex || m.Ifindex == 0) {
				to = append(to, f)
				continue
			}
		}
		others = append(others, f)
	}
	return to, others, nil
}

// createIfb makes the attachment's ifb, up, tagged with its owner.
func (h host) createIfb(name, alias string, mtu int) (netlink.Link, error) {
	attrs := netlink.NewLinkAttrs()
	attrs.Name, attrs.MTU, attrs.Flags = name, mtu, net.FlagUp
	if err := h.H.LinkAdd(&netlink.Ifb{LinkAttrs: attrs}); err != nil {
		return nil, fmt.Errorf("create ifb %s: %w", name, err)
	}
	l, err := h.H.LinkByName(name)
	if err != nil {
		return nil, fmt.Errorf("find new ifb %s: %w", name, err)
	}
	if err := h.H.LinkSetAlias(l, alias); err != nil {
		return l, fmt.Errorf("tag ifb %s: %w", name, err)
	}
	return l, nil
}

// ifb is the ifb device called name, nil when absent or when the name
// belongs to a link of another type (not ours to touch).
func (h host) ifb(name string) (netlink.Link, error) {
	l, err := h.Get(name)
	if err != nil || l == nil || l.Type() != "ifb" {
		return nil, err
	}
	return l, nil
}

// teardown removes one attachment's shaping and treats anything already
// gone as done: the redirect to the ifb and the root tbf on the host veth
// (when veth is nil, the veths redirecting to the ifb), then the ifb itself.
func (h host) teardown(veth netlink.Link, ifbName string) error {
	var errs []error
	ifb, err := h.ifb(ifbName)
	if err != nil {
		errs = append(errs, err)
	}
	ifindex := -1 // matches only dangling redirects
	if ifb != nil {
		ifindex = ifb.Attrs().Index
	}
	veths := []netlink.Link{}
	if veth != nil {
		veths = append(veths, veth)
	} else if ifb != nil {
		found, err := h.redirectingTo(ifindex)
		if err != nil {
			errs = append(errs, err)
		}
		veths = found
	}
	for _, v := range veths {
		if err := h.unshape(v, ifindex); err != nil {
			errs = append(errs, err)
		}
	}
	if ifb != nil {
		if err := h.H.LinkDel(ifb); err != nil && !link.IsNotFound(err) {
			errs = append(errs, fmt.Errorf("delete ifb %s: %w", ifbName, err))
		}
	}
	return errors.Join(errs...)
}

// unshape removes plumb's tc objects from a host veth: the redirect to
// ifindex (and dangling ones), the ingress qdisc once no other filter uses
// it, and the root tbf.
func (h host) unshape(veth netlink.Link, ifindex int) error {
	name := veth.Attrs().Name
	var errs []error
	to, others, err := h.redirects(veth, ifindex)
	if err != nil {
		errs = append(errs, err)
	}
	for _, f := range to {
		if err := h.H.FilterDel(f); err != nil && !errors.Is(err, unix.ENOENT) && !link.IsNotFound(err) {
			errs = append(errs, fmt.Errorf("remove redirect from %s: %w", name, err))
		}
	}
	if has, err := h.hasIngress(veth); err != nil {
		errs = append(errs, err)
	} else if has && len(others) == 0 {
		q := &netlink.Ingress{QdiscAttrs: netlink.QdiscAttrs{LinkIndex: veth.Attrs().Index, Handle: ingressHandle, Parent: netlink.HANDLE_INGRESS}}
		if err := h.H.QdiscDel(q); err != nil && !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.EINVAL) && !link.IsNotFound(err) {
			errs = append(errs, fmt.Errorf("remove ingress qdisc from %s: %w", name, err))
		}
	}
	if t, err := h.rootTbf(veth); err != nil {
		errs = append(errs, err)
	} else if t != nil {
		if err := h.H.QdiscDel(t); err != nil && !errors.Is(err, unix.ENOENT) && !link.IsNotFound(err) {
			errs = append(errs, fmt.Errorf("remove tbf from %s: %w", name, err))
		}
	}
	return errors.Join(errs...)
}

// redirectingTo finds the veths whose ingress redirects to ifindex: the host
// veth of an attachment known only by its ifb (GC, DEL without prevResult
// after the container namespace is gone).
func (h host) redirectingTo(ifindex int) ([]netlink.Link, error) {
	links, err := h.H.LinkList()
	if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
		return nil, fmt.Errorf("list links: %w", err)
	}
	var out []netlink.Link
	for _, l := range links {
		if _, ok := l.(*netlink.Veth); !ok {
			continue
		}
		fs, err := h.H.FilterList(l, ingressHandle)
		if err != nil {
			continue // no ingress qdisc
		}
		for _, f := range fs {
			if u, ok := f.(*netlink.U32); ok && u.RedirIndex == ifindex {
				out = append(out, l)
				break
			}
		}
	}
	return out, nil
}

// checkTbf compares l's root tbf with p.
func (h host) checkTbf(l netlink.Link, p tbfParams, what string) error {
	t, err := h.rootTbf(l)
	if err != nil {
		return err
	}
	name := l.Attrs().Name
	switch {
	case t == nil:
		return fmt.Errorf("%s: no tbf qdisc on %s", what, name)
	case t.Rate != p.Rate:
		return fmt.Errorf("%s: tbf on %s has rate %d bytes/s, config wants %d", what, name, t.Rate, p.Rate)
	case t.Buffer != p.Buffer:
		return fmt.Errorf("%s: tbf on %s has buffer %d ticks, config wants %d", what, name, t.Buffer, p.Buffer)
	case t.Limit != p.Limit:
		return fmt.Errorf("%s: tbf on %s has limit %d bytes, config wants %d", what, name, t.Limit, p.Limit)
	}
	return nil
}
