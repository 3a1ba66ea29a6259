package fw

import (
	"context"

	"github.com/plumbnet/plumb/internal/flock"
)

// DefaultLockPath is the file every plumb process holds an exclusive flock
// on while it changes firewall state, so that "does the base chain exist?
// then create it" and read-then-write sequences never interleave between
// concurrent plugin processes.
const DefaultLockPath = "/run/plumb/fw.lock"

// lockFile takes the exclusive lock at path (DefaultLockPath when empty);
// release drops it. The wait ends with ctx.
func lockFile(ctx context.Context, path string) (release func(), err error) {
	if path == "" {
		path = DefaultLockPath
	}
	return flock.Acquire(ctx, path)
}
