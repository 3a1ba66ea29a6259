package store

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// newDisk opens a locked Disk for network "mynet" in a fresh data dir,
// optionally seeded with files in the reference layout first.
func newDisk(t *testing.T, seed map[string]string) (*Disk, string) {
	t.Helper()
	dataDir := t.TempDir()
	dir := filepath.Join(dataDir, "mynet")
	if seed != nil {
		if err := os.Mkdir(dir, 0o755); err != nil { // as the reference creates it
			t.Fatal(err)
		}
		for name, content := range seed {
			if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	d, err := NewDisk(dataDir, "mynet")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	lock(t, d)
	return d, dir
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func exists(path string) bool {
	_, err := os.Lstat(path)
	return err == nil
}

// TestDiskReadsReferenceLayout feeds the store a directory as the reference
// plugin (current and old versions) leaves it.
func TestDiskReadsReferenceLayout(t *testing.T) {
	d, dir := newDisk(t, map[string]string{
		"10.1.0.2":           "ctr1\r\neth0",
		"10.1.0.3":           "ctr1", // old version: container ID only
		"10.1.0.4":           "  ctr2\r\neth1\n",
		"2001:db8::5":        "ctr3\r\neth0",
		"last_reserved_ip.0": "10.1.0.4",
		"last_reserved_ip.1": "2001:db8::5",
		"lock":               "",
	})

	got, err := d.GetByOwner(Owner{"ctr1", "eth0"})
	wantIPs(t, "GetByOwner(ctr1/eth0)", got, err, "10.1.0.2", "10.1.0.3")
	got, err = d.GetByOwner(Owner{"ctr1", "net9"})
	wantIPs(t, "GetByOwner(ctr1/net9)", got, err, "10.1.0.3") // legacy file matches any ifname
	got, err = d.GetByOwner(Owner{"ctr2", "eth1"})
	wantIPs(t, "GetByOwner(ctr2/eth1)", got, err, "10.1.0.4")
	got, err = d.GetByOwner(Owner{"ctr2", "eth0"})
	wantIPs(t, "GetByOwner(ctr2/eth0)", got, err)

	wantList(t, d,
		`10.1.0.2 "ctr1" "eth0"`,
		`10.1.0.3 "ctr1" ""`,
		`10.1.0.4 "ctr2" "eth1"`,
		`2001:db8::5 "ctr3" "eth0"`,
	)
	for id, want := range map[string]string{"0": "10.1.0.4", "1": "2001:db8::5"} {
		if got, err := d.LastReservedIP(id); err != nil || got.String() != want {
			t.Errorf("LastReservedIP(%s) = %v, %v; want %s", id, got, err, want)
		}
	}
	if reserve(t, d, Owner{"x", "eth0"}, "10.1.0.4", "0") {
		t.Error("reserved 10.1.0.4, which a reference file holds")
	}
	mustReserve(t, d, Owner{"x", "eth0"}, "10.1.0.5", "0")

	// Reference rule: exact records first; the legacy one only once none
	// are left.
	got, err = d.ReleaseByOwner(Owner{"ctr1", "eth0"})
	wantIPs(t, "ReleaseByOwner(ctr1/eth0)", got, err, "10.1.0.2")
	got, err = d.ReleaseByOwner(Owner{"ctr1", "eth0"})
	wantIPs(t, "second ReleaseByOwner(ctr1/eth0)", got, err, "10.1.0.3")
	if exists(filepath.Join(dir, "10.1.0.2")) || exists(filepath.Join(dir, "10.1.0.3")) {
		t.Error("released files still exist")
	}
	if !exists(filepath.Join(dir, "lock")) {
		t.Error("the lock file was removed")
	}
}

// TestDiskWritesReferenceFormat checks the bytes a reference plugin reads.
func TestDiskWritesReferenceFormat(t *testing.T) {
	d, dir := newDisk(t, nil)
	mustReserve(t, d, Owner{" abc123 ", "eth0"}, "10.0.0.7", "0")
	mustReserve(t, d, Owner{"def456", "net1"}, "2001:db8::a", "1")
	for name, want := range map[string]string{
		"10.0.0.7":           "abc123\r\neth0",
		"2001:db8::a":        "def456\r\nnet1",
		"last_reserved_ip.0": "10.0.0.7",
		"last_reserved_ip.1": "2001:db8::a",
	} {
		if got := readFile(t, filepath.Join(dir, name)); got != want {
			t.Errorf("%s holds %q, want %q", name, got, want)
		}
	}
	names := dirNames(t, dir)
	// .plumb-owners is the owner index; the reference skips what it cannot
	// parse as an address.
	want := ".plumb-owners 10.0.0.7 2001:db8::a last_reserved_ip.0 last_reserved_ip.1 lock"
	if got := strings.Join(names, " "); got != want {
		t.Errorf("directory holds %q, want %q (no temp files left)", got, want)
	}
}

func dirNames(t *testing.T, dir string) []string {
	t.Helper()
	es, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range es {
		names = append(names, e.Name())
	}
	return names
}

func TestDiskPermissions(t *testing.T) {
	dataDir := filepath.Join(t.TempDir(), "var", "lib", "cni")
	d, err := NewDisk(dataDir, "mynet")
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	lock(t, d)
	mustReserve(t, d, a0, "10.0.0.2", "0")
	dir := filepath.Join(dataDir, "mynet")
	for path, want := range map[string]fs.FileMode{
		filepath.Join(dataDir):                   fs.ModeDir | 0o700,
		dir:                                      fs.ModeDir | 0o700,
		filepath.Join(dir, "lock"):               0o600,
		filepath.Join(dir, "10.0.0.2"):           0o600,
		filepath.Join(dir, "last_reserved_ip.0"): 0o600,
	} {
		fi, err := os.Lstat(path)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode() != want {
			t.Errorf("%s has mode %v, want %v", path, fi.Mode(), want)
		}
	}
}

func TestDiskRemovesTempFilesOnLock(t *testing.T) {
	d, dir := newDisk(t, map[string]string{
		".plumb-tmp-123456": "crashed\r\neth0",
		"10.0.0.2":          "ctr\r\neth0",
	})
	// newDisk locked after seeding, so the leftover is already gone.
	if exists(filepath.Join(dir, ".plumb-tmp-123456")) {
		t.Error("Lock left a stale temp file")
	}
	got, err := d.GetByOwner(Owner{"x", ""})
	wantIPs(t, "GetByOwner(x)", got, err)
	// One appearing while we hold the lock (impossible in practice) is at
	// least never taken for a reservation.
	if err := os.WriteFile(filepath.Join(dir, ".plumb-tmp-9"), []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	wantList(t, d, `10.0.0.2 "ctr" "eth0"`)
	if err := d.Unlock(); err != nil {
		t.Fatal(err)
	}
	lock(t, d)
	if exists(filepath.Join(dir, ".plumb-tmp-9")) {
		t.Error("relocking left a stale temp file")
	}
}

// TestDiskBrokenFilesBlockReuse covers files a crashed reference plugin can
// leave: the address must stay taken and GC must be able to see it.
func TestDiskBrokenFilesBlockReuse(t *testing.T) {
	d, _ := newDisk(t, map[string]string{
		"10.0.0.2": "",
		"10.0.0.3": "ct", // truncated container ID
	})
	if reserve(t, d, a0, "10.0.0.2", "0") {
		t.Error("reserved 10.0.0.2 over an empty reservation file")
	}
	if reserve(t, d, a0, "10.0.0.3", "0") {
		t.Error("reserved 10.0.0.3 over a truncated reservation file")
	}
	wantList(t, d, `10.0.0.2 "" ""`, `10.0.0.3 "ct" ""`)
	if err := d.Release(ip("10.0.0.2")); err != nil {
		t.Fatal(err)
	}
	mustReserve(t, d, a0, "10.0.0.2", "0")
}

func TestDiskIgnoresForeignFiles(t *testing.T) {
	d, dir := newDisk(t, map[string]string{
		"10.0.0.2":           "ctr\r\neth0",
		"README":             "ctr\r\neth0",
		"2001:DB8::1":        "ctr\r\neth0", // not the canonical spelling
		"last_reserved_ip.0": "ctr\r\neth0", // garbage marker
	})
	if err := os.Mkdir(filepath.Join(dir, "sub"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "sub", "10.0.0.9"), []byte("ctr\r\neth0"), 0o600); err != nil {
		t.Fatal(err)
	}
	wantList(t, d, `10.0.0.2 "ctr" "eth0"`)
	got, err := d.GetByOwner(Owner{"ctr", "eth0"})
	wantIPs(t, "GetByOwner(ctr/eth0)", got, err, "10.0.0.2")
	if last, err := d.LastReservedIP("0"); err != nil || last != nil {
		t.Errorf("LastReservedIP with an unparsable marker = %v, %v; want nil, nil", last, err)
	}
	got, err = d.ReleaseByOwner(Owner{"ctr", "eth0"})
	wantIPs(t, "ReleaseByOwner(ctr/eth0)", got, err, "10.0.0.2")
	for _, name := range []string{"README", "2001:DB8::1", "last_reserved_ip.0", "sub/10.0.0.9"} {
		if !exists(filepath.Join(dir, name)) {
			t.Errorf("ReleaseByOwner removed %s", name)
		}
	}
}

// TestDiskLockIsReferenceLock takes the lock the way the reference does
// (flock on <dir>/lock) and checks both sides exclude each other.
func TestDiskLockIsReferenceLock(t *testing.T) {
	dataDir := t.TempDir()
	d, err := NewDisk(dataDir, "mynet")
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	lockPath := filepath.Join(dataDir, "mynet", "lock")
	f, err := os.Open(lockPath)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		t.Fatal(err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Millisecond)
	defer cancel()
	err = d.Lock(ctx)
	if !errors.Is(err, ErrLockTimeout) {
		t.Fatalf("Lock while another process holds it = %v, want ErrLockTimeout", err)
	}
	if !strings.Contains(err.Error(), lockPath) {
		t.Errorf("Lock error %q does not name %s", err, lockPath)
	}

	if err := unix.Flock(int(f.Fd()), unix.LOCK_UN); err != nil {
		t.Fatal(err)
	}
	lock(t, d)
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); !errors.Is(err, unix.EWOULDBLOCK) {
		t.Errorf("foreign flock while Disk holds the lock = %v, want EWOULDBLOCK", err)
	}
	if err := d.Unlock(); err != nil {
		t.Fatal(err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		t.Errorf("foreign flock after Unlock = %v", err)
	}
}

// TestDiskLockWaits checks a waiter gets the lock soon after it is freed.
func TestDiskLockWaits(t *testing.T) {
	dataDir := t.TempDir()
	d1, err := NewDisk(dataDir, "n")
	if err != nil {
		t.Fatal(err)
	}
	defer d1.Close()
	d2, err := NewDisk(dataDir, "n")
	if err != nil {
		t.Fatal(err)
	}
	defer d2.Close()
	lock(t, d1)
	go func() {
		time.Sleep(50 * time.Millisecond)
		d1.Unlock()
	}()
	start := time.Now()
	lock(t, d2)
	if d := time.Since(start); d < 40*time.Millisecond || d > 2*time.Second {
		t.Errorf("waiter got the lock after %v, want about 50ms", d)
	}
}

func TestNewDiskValidation(t *testing.T) {
	tmp := t.TempDir()
	bad := []struct{ dataDir, network, wantInErr string }{
		{tmp, "", "empty"},
		{tmp, ".", "not a directory name"},
		{tmp, "..", "not a directory name"},
		{tmp, "../x", "'/'"},
		{tmp, "a/b", "'/'"},
		{tmp, "/abs", "'/'"},
		{tmp, "x\x00y", "NUL"},
		{tmp, strings.Repeat("n", 256), "longer than 255"},
		{"", "net", "absolute"},
		{"relative/dir", "net", "absolute"},
		{tmp + "/../x", "net", "clean"},
		{tmp + "/", "net", "clean"},
	}
	for _, c := range bad {
		d, err := NewDisk(c.dataDir, c.network)
		if err == nil {
			d.Close()
			t.Errorf("NewDisk(%q, %q) succeeded", c.dataDir, c.network)
			continue
		}
		if !strings.Contains(err.Error(), c.wantInErr) {
			t.Errorf("NewDisk(%q, %q) = %q, want it to mention %q", c.dataDir, c.network, err, c.wantInErr)
		}
	}
	if names := dirNames(t, tmp); len(names) != 0 {
		t.Errorf("rejected names created %v", names)
	}

	long := strings.Repeat("n", 255)
	d, err := NewDisk(tmp, long)
	if err != nil {
		t.Fatalf("NewDisk with a 255-byte name: %v", err)
	}
	defer d.Close()
	if d.Dir() != filepath.Join(tmp, long) {
		t.Errorf("Dir() = %s", d.Dir())
	}
}

// TestDiskTornLastReservedIP: last_reserved_ip is written without fsync, so
// a power cut can leave it empty; that reads as "none recorded".
func TestDiskTornLastReservedIP(t *testing.T) {
	d, _ := newDisk(t, map[string]string{"last_reserved_ip.0": "", "10.0.0.2": "ctr\r\neth0"})
	last, err := d.LastReservedIP("0")
	if err != nil || last != nil {
		t.Fatalf("LastReservedIP of an empty file = %v, %v; want nil, nil", last, err)
	}
	mustReserve(t, d, Owner{"next", "eth0"}, "10.0.0.3", "0")
	if last, err := d.LastReservedIP("0"); err != nil || !last.Equal(ip("10.0.0.3")) {
		t.Errorf("LastReservedIP after a reservation = %v, %v", last, err)
	}
}
