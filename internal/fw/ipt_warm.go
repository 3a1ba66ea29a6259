package fw

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os/exec"
	"strings"
)

// iptables-restore spends about a millisecond starting (exec, dynamic
// linking, its extensions) before it reads a line, and a chain ADD on the
// iptables backend runs two. A caller that knows a batch is coming warms
// the family: a goroutine starts the process, which then waits on its
// input while the caller waits for IPAM or reads state, and the batch costs
// only its own work. A warmed process that gets no batch is cooled: its
// input closes empty and it exits having changed nothing.

// restoreArgs are the arguments of every iptables-restore plumb runs.
var restoreArgs = []string{"--noflush", "--wait"}

// restoreProc is an iptables-restore started ahead of its batch.
type restoreProc struct {
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	stderr bytes.Buffer
	err    error // from starting it
}

// warm starts the family's next iptables-restore in the background,
// unless one is already warming.
func (f *iptFamily) warm(ctx context.Context) {
	f.warmMu.Lock()
	defer f.warmMu.Unlock()
	if f.warming != nil {
		return
	}
	ch := make(chan *restoreProc, 1)
	f.warming = ch
	go func() {
		p := &restoreProc{cmd: exec.CommandContext(ctx, f.restore, restoreArgs...)}
		p.cmd.Stderr = &p.stderr
		if p.stdin, p.err = p.cmd.StdinPipe(); p.err == nil {
			p.err = p.cmd.Start()
		}
		ch <- p
	}()
}

// takeWarm returns the warmed process, once started, or nil.
func (f *iptFamily) takeWarm() *restoreProc {
	f.warmMu.Lock()
	ch := f.warming
	f.warming = nil
	f.warmMu.Unlock()
	if ch == nil {
		return nil
	}
	p := <-ch
	if p.err != nil {
		if p.stdin != nil {
			p.stdin.Close()
		}
		return nil // the batch starts its own
	}
	return p
}

// cool ends a warmed process that got no batch.
func (f *iptFamily) cool() {
	if p := f.takeWarm(); p != nil {
		p.stdin.Close()
		p.cmd.Wait()
	}
}

// restoreBatch runs batch through iptables-restore --noflush --wait, on
// the warmed process when there is one.
func (f *iptFamily) restoreBatch(ctx context.Context, batch string) error {
	p := f.takeWarm()
	if p == nil {
		_, err := f.run(ctx, batch, f.restore, restoreArgs...)
		return err
	}
	iptRestores.Add(1)
	_, werr := io.WriteString(p.stdin, batch)
	cerr := p.stdin.Close()
	err := p.cmd.Wait()
	if err == nil {
		err = errors.Join(werr, cerr) // it exited without reading it all
	}
	if err == nil {
		return nil
	}
	code := -1
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	}
	return &iptError{cmd: f.restore + " " + strings.Join(restoreArgs, " "), code: code, stderr: strings.TrimSpace(p.stderr.String()), err: err}
}

// Warmer is a backend that can pay its start-up cost before the rule is
// known; bridge warms the masquerade while IPAM runs. Cool must follow.
type Warmer interface {
	Warm(ctx context.Context)
	Cool()
}

var _ Warmer = (*IPTMasq)(nil)

// Warm starts the IPv4 iptables-restore of the next AddMasq (IPv4 is what
// nearly every network has; an IPv6 family starts its own).
func (m *IPTMasq) Warm(ctx context.Context) {
	if f := m.fams[famV4]; f != nil {
		f.warm(ctx)
	}
}

// Cool ends what Warm started and AddMasq did not use.
func (m *IPTMasq) Cool() {
	for _, f := range m.available() {
		f.cool()
	}
}
