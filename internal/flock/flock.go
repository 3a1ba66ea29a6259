// Package flock is plumb's one way to take an exclusive flock(2) with a
// deadline. Waiters block in the kernel (a blocking flock in a goroutine)
// rather than poll: hundreds of plugin processes polling with LOCK_NB
// starve the holder of CPU.
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

// Acquire opens (creating it 0600, and its directory 0700) the lock file at
// path and takes an exclusive flock on it, waiting until ctx ends; release
// drops the lock. Each call uses its own open file, so a waiter that gave
// up and gets the lock later drops only its own.
func Acquire(ctx context.Context, path string) (release func(), err error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("create lock directory for %s: %w", path, err)
	}
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CREAT|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open lock %s: %w", path, err)
	}
	release = func() { unix.Close(fd) } // closing the last descriptor drops the lock
	err = retry(fd, unix.LOCK_EX|unix.LOCK_NB)
	if err == nil {
		return release, nil
	}
	if !errors.Is(err, unix.EWOULDBLOCK) {
		unix.Close(fd)
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	done := make(chan error, 1)
	go func() { done <- retry(fd, unix.LOCK_EX) }()
	select {
	case err := <-done:
		if err != nil {
			unix.Close(fd)
			return nil, fmt.Errorf("lock %s: %w", path, err)
		}
		return release, nil
	case <-ctx.Done():
		go func() { <-done; unix.Close(fd) }() // whenever it gets the lock, hand it back
		return nil, fmt.Errorf("lock %s: %w: %w", path, ErrTimeout, context.Cause(ctx))
	}
}

func retry(fd, how int) error {
	for {
		if err := unix.Flock(fd, how); !errors.Is(err, unix.EINTR) {
			return err
		}
	}
}
