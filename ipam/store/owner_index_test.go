package store

import (
	"os"
	"path/filepath"
	"testing"
)

// relock ends the lock hold and starts a new one, as the next plugin
// process would.
func relock(t *testing.T, d *Disk) {
	t.Helper()
	if err := d.Unlock(); err != nil {
		t.Fatal(err)
	}
	lock(t, d)
}

// TestOwnerIndexAnswersLookups shows lookups go through the index, not a
// scan: a file rewritten in place (which leaves the directory as it was) is
// not seen under its new owner, where a scan would find it.
func TestOwnerIndexAnswersLookups(t *testing.T) {
	d, dir := newDisk(t, nil)
	a, b := Owner{"a", "eth0"}, Owner{"b", "eth0"}
	mustReserve(t, d, a, "10.0.0.2", "0")
	mustReserve(t, d, b, "10.0.0.3", "0")
	relock(t, d)
	if err := os.WriteFile(filepath.Join(dir, "10.0.0.3"), []byte("a\r\neth0"), 0o600); err != nil {
		t.Fatal(err)
	}
	got, err := d.GetByOwner(a)
	wantIPs(t, "GetByOwner(a)", got, err, "10.0.0.2")
	// The entry for b no longer checks out against the file: ignored.
	got, err = d.GetByOwner(b)
	wantIPs(t, "GetByOwner(b)", got, err)
}

// TestOwnerIndexSeesForeignWriters: reservations made or removed behind
// plumb's back (the reference plugin, an upgrade, a person) are found,
// because the directory no longer matches the stamp and the index is
// rebuilt.
func TestOwnerIndexSeesForeignWriters(t *testing.T) {
	// Upgrade: the reference left reservations and no index.
	d, dir := newDisk(t, map[string]string{
		"10.0.0.5": "old\r\neth0",
		"10.0.0.6": "legacy", // container ID only, from old versions
	})
	got, err := d.GetByOwner(Owner{"old", "eth0"})
	wantIPs(t, "GetByOwner(old)", got, err, "10.0.0.5")
	got, err = d.GetByOwner(Owner{"legacy", "net1"})
	wantIPs(t, "GetByOwner(legacy/net1)", got, err, "10.0.0.6")

	mustReserve(t, d, Owner{"a", "eth0"}, "10.0.0.2", "0")
	relock(t, d)
	// A foreign writer adds one reservation and removes another.
	if err := os.WriteFile(filepath.Join(dir, "10.0.0.9"), []byte("ref\r\neth0"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(dir, "10.0.0.2")); err != nil {
		t.Fatal(err)
	}
	relock(t, d)
	got, err = d.GetByOwner(Owner{"ref", "eth0"})
	wantIPs(t, "GetByOwner(ref)", got, err, "10.0.0.9")
	got, err = d.GetByOwner(Owner{"a", "eth0"})
	wantIPs(t, "GetByOwner(a) after a foreign release", got, err)
	rel, err := d.ReleaseByOwner(Owner{"ref", "eth0"})
	wantIPs(t, "ReleaseByOwner(ref)", rel, err, "10.0.0.9")
	rel, err = d.ReleaseByOwner(Owner{"legacy", "eth0"})
	wantIPs(t, "ReleaseByOwner(legacy/eth0)", rel, err, "10.0.0.6")
	wantList(t, d, `10.0.0.5 "old" "eth0"`)
}

// TestOwnerIndexCrashBeforeReservation: the entry is written before the
// reservation, so a crash in between leaves only an entry, which neither
// gives the address to its owner nor hides the address's real holder.
func TestOwnerIndexCrashBeforeReservation(t *testing.T) {
	d, _ := newDisk(t, nil)
	crashed, other := Owner{"crashed", "eth0"}, Owner{"other", "eth0"}
	if err := d.ensureIndex(); err != nil {
		t.Fatal(err)
	}
	if err := d.indexAdd(crashed, ip("10.0.0.4")); err != nil {
		t.Fatal(err)
	}
	relock(t, d)
	got, err := d.GetByOwner(crashed)
	wantIPs(t, "GetByOwner(crashed)", got, err)
	mustReserve(t, d, other, "10.0.0.4", "0")
	got, err = d.GetByOwner(other)
	wantIPs(t, "GetByOwner(other)", got, err, "10.0.0.4")
	rel, err := d.ReleaseByOwner(crashed)
	wantIPs(t, "ReleaseByOwner(crashed)", rel, err)
	wantList(t, d, `10.0.0.4 "other" "eth0"`)
}

// TestOwnerIndexFollowsReleases: Release and ReleaseByOwner drop the
// entries with the reservations, and the stamp stays valid so the next
// holder does not rebuild.
func TestOwnerIndexFollowsReleases(t *testing.T) {
	d, dir := newDisk(t, nil)
	o := Owner{"c", "eth0"}
	mustReserve(t, d, o, "10.0.0.2", "0")
	mustReserve(t, d, o, "2001:db8::2", "1")
	mustReserve(t, d, Owner{"d", "eth0"}, "10.0.0.3", "0")
	if err := d.Release(ip("10.0.0.3")); err != nil {
		t.Fatal(err)
	}
	rel, err := d.ReleaseByOwner(o)
	wantIPs(t, "ReleaseByOwner(c)", rel, err, "10.0.0.2", "2001:db8::2")
	if names := dirNames(t, filepath.Join(dir, indexDir)); len(names) != 1 || names[0] != stampName {
		t.Errorf("index holds %v after every release, want only the stamp", names)
	}
	relock(t, d)
	if !d.indexOK {
		t.Error("the stamp did not survive plumb's own changes: every call would rebuild")
	}
}

// TestOwnerIndexOldSymlinkStamp: the stamp used to be a symlink; a store
// left by that version is rebuilt once and then stamped in place, with no
// file created anywhere through the old link.
func TestOwnerIndexOldSymlinkStamp(t *testing.T) {
	d, dir := newDisk(t, nil)
	a := Owner{"a", "eth0"}
	mustReserve(t, d, a, "10.0.0.2", "0")
	stamp := filepath.Join(dir, indexDir, stampName)
	now, err := d.dirStamp()
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(stamp); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(now, stamp); err != nil {
		t.Fatal(err)
	}
	relock(t, d)
	mustReserve(t, d, Owner{"b", "eth0"}, "10.0.0.3", "0")
	relock(t, d)
	if !d.stampValid() {
		t.Fatal("stamp not valid after a reservation")
	}
	if fi, err := os.Lstat(stamp); err != nil || !fi.Mode().IsRegular() {
		t.Fatalf("stamp after the upgrade: %v, %v; want a regular file", fi, err)
	}
	if _, err := os.Lstat(filepath.Join(dir, indexDir, now)); err == nil {
		t.Fatal("a file was created through the old symlink")
	}
	got, err := d.GetByOwner(a)
	wantIPs(t, "GetByOwner(a)", got, err, "10.0.0.2")
}
