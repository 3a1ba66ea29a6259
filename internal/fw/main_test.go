package fw

import (
	"testing"

	"github.com/plumbnet/plumb/internal/testns"
)

// TestMain runs the package's tests, as root, in a throwaway network
// namespace: no rule these tests make can reach the machine's own.
func TestMain(m *testing.M) { testns.MainInHostNS(m) }
