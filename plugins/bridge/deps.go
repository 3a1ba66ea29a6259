package main

import (
	"context"

	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/containernetworking/cni/pkg/types"

	"github.com/plumbnet/plumb/internal/fw"
)

// IPAM runs the IPAM plugin named in the config.
type IPAM interface {
	Add(ctx context.Context, plugin string, stdin []byte) (types.Result, error)
	Del(ctx context.Context, plugin string, stdin []byte) error
	Check(ctx context.Context, plugin string, stdin []byte) error
	GC(ctx context.Context, plugin string, stdin []byte) error
	Status(ctx context.Context, plugin string, stdin []byte) error
}

// execIPAM runs the IPAM binary found in CNI_PATH with this call's environment.
type execIPAM struct{}

func (execIPAM) Add(ctx context.Context, p string, in []byte) (types.Result, error) {
	return invoke.DelegateAdd(ctx, p, in, nil)
}
func (execIPAM) Del(ctx context.Context, p string, in []byte) error {
	return invoke.DelegateDel(ctx, p, in, nil)
}
func (execIPAM) Check(ctx context.Context, p string, in []byte) error {
	return invoke.DelegateCheck(ctx, p, in, nil)
}
func (execIPAM) GC(ctx context.Context, p string, in []byte) error {
	return invoke.DelegateGC(ctx, p, in, nil)
}
func (execIPAM) Status(ctx context.Context, p string, in []byte) error {
	return invoke.DelegateStatus(ctx, p, in, nil)
}

// New returns the bridge plugin wired to the real system.
func New() *Plugin {
	return &Plugin{IPAM: &localIPAM{}, Masq: newMasq, Spoof: func() fw.SpoofGuard { return &fw.NFTSpoof{} }}
}

func newMasq(backend string) (fw.Masquerader, error) {
	if backend == "iptables" {
		return fw.NewIPTMasq()
	}
	return fw.NewNFTMasq()
}
