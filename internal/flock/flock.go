// Package flock is plumb's one way to take an exclusive flock(2) with a
// deadline. Waiters block in the kernel (a blocking flock on a duplicate
// descriptor, in a goroutine) rather than poll: hundreds of plugin processes
// polling with LOCK_NB starve the holder of CPU.
package flock

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// ErrTimeout is returned (wrapped) when ctx ends before the lock is had.
var ErrTimeout = errors.New("lock not acquired in time")

// Lock takes an exclusive flock on f's open file, waiting until ctx ends.
// The lock belongs to the open file: closing f (or LOCK_UN on it) drops it.
func Lock(ctx context.Context, f *os.File) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var fd int
	var ferr, derr error
	if err := rc.Control(func(raw uintptr) {
		ferr = retry(int(raw), unix.LOCK_EX|unix.LOCK_NB)
		if errors.Is(ferr, unix.EWOULDBLOCK) {
			fd, derr = unix.Dup(int(raw))
		}
	}); err != nil {
		return err
	}
	if !errors.Is(ferr, unix.EWOULDBLOCK) {
		return ferr // had it at once, or a real error
	}
	if derr != nil {
		return fmt.Errorf("dup lock descriptor: %w", derr)
	}
	done := make(chan error, 1)
	go func() { done <- retry(fd, unix.LOCK_EX) }()
	select {
	case err := <-done:
		unix.Close(fd) // the lock stays with the open file f shares
		return err
	case <-ctx.Done():
		// Whoever gets the lock after we gave up must hand it back.
		go func() {
			if err := <-done; err == nil {
				unix.Flock(fd, unix.LOCK_UN)
			}
			unix.Close(fd)
		}()
		return fmt.Errorf("%w: %w", ErrTimeout, context.Cause(ctx))
	}
}

// Acquire opens (creating it 0600, and its directory 0700) the lock file at
// path and locks it; release unlocks and closes it.
func Acquire(ctx context.Context, path string) (release func(), err error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("create lock directory for %s: %w", path, err)
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open lock %s: %w", path, err)
	}
	if err := Lock(ctx, f); err != nil {
		f.Close()
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	return func() { f.Close() }, nil
}

func retry(fd, how int) error {
	for {
		if err := unix.Flock(fd, how); !errors.Is(err, unix.EINTR) {
			return err
		}
	}
}

// Unlock drops the lock held through f's open file (the file stays open).
func Unlock(f *os.File) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var ferr error
	if err := rc.Control(func(raw uintptr) { ferr = retry(int(raw), unix.LOCK_UN) }); err != nil {
		return err
	}
	return ferr
}
