package fw

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"
)

// DefaultLockPath is the file every plumb process holds an exclusive flock
// on while it changes firewall state, so that "does the base chain exist?
// then create it" and read-then-write sequences never interleave between
// concurrent plugin processes.
const DefaultLockPath = "/run/plumb/fw.lock"

// lockPollInterval is how often a context-bound wait retries the lock.
const lockPollInterval = 2 * time.Millisecond

// lockFile takes the exclusive lock at path, creating its directory (0700)
// and the file (0600) when missing; release drops it. The wait ends with ctx.
func lockFile(ctx context.Context, path string) (release func(), err error) {
	if path == "" {
		path = DefaultLockPath
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("create lock directory for %s: %w", path, err)
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open lock %s: %w", path, err)
	}
	fd := int(f.Fd())
	if ctx.Done() == nil {
		// Nothing can cancel the wait: block in the kernel.
		err = flockRetry(fd, unix.LOCK_EX)
	} else {
		err = flockPoll(ctx, fd)
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	// Closing the file drops the lock.
	return func() { f.Close() }, nil
}

func flockRetry(fd, how int) error {
	for {
		err := unix.Flock(fd, how)
		if !errors.Is(err, unix.EINTR) {
			return err
		}
	}
}

func flockPoll(ctx context.Context, fd int) error {
	t := time.NewTicker(lockPollInterval)
	defer t.Stop()
	for {
		err := flockRetry(fd, unix.LOCK_EX|unix.LOCK_NB)
		if !errors.Is(err, unix.EWOULDBLOCK) {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
}
