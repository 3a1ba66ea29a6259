package store

import (
	"encoding/hex"
	"errors"
	"fmt"
	"hash/fnv"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"syscall"
)

// The reference format keys reservations by address only, so finding an
// owner's addresses means reading every file: 1000 containers cost 1000
// opens on each ADD and DEL. The owner index answers it with a few
// syscalls:
//
//	.plumb-owners/<key(owner)>/<ip> -> ../../<ip>     one symlink per reservation
//	.plumb-owners/stamp: "<mtime> <ctime> <ino>"        of the store directory
//
// The index is only a hint. Every hit is checked against the reservation
// file itself, so a stale entry (a crash between writing the entry and the
// reservation, a reference plugin releasing an address) is ignored. What
// the index must never do is miss a reservation; the stamp guards that. Any
// change to the store directory that did not come through this code (a
// crashed writer, the reference plugin, a person) changes the directory's
// times, the stamp no longer matches, and the next caller rebuilds the
// index from a full scan. Symlinks, rather than empty files, keep the
// reference plugin consistent if it ever runs here again: it walks
// subdirectories, reads through the link, and so sees the right owner and
// removes the entry along with the reservation.
const (
	indexDir  = ".plumb-owners"
	stampName = "stamp"
)

// ownerKey names an owner's index directory; legacy records (container ID
// only) have their own key, that of the owner with an empty ifname. FNV,
// not a cryptographic hash: keys need no secrecy (a collision only shares a
// directory, and every hit is checked against the file), and crypto would
// add 200 KB to the binary and to host-local's memory.
func ownerKey(o Owner) string {
	h := fnv.New128a()
	h.Write([]byte(o.ContainerID + lineBreak + o.IfName))
	return hex.EncodeToString(h.Sum(nil))
}

func (d *Disk) indexPath(elem ...string) string {
	return filepath.Join(append([]string{d.dir, indexDir}, elem...)...)
}

// dirStamp describes the store directory's current state.
func (d *Disk) dirStamp() (string, error) {
	var st syscall.Stat_t
	if err := syscall.Stat(d.dir, &st); err != nil {
		return "", err
	}
	return fmt.Sprintf("%d.%09d %d.%09d %d", st.Mtim.Sec, st.Mtim.Nsec, st.Ctim.Sec, st.Ctim.Nsec, st.Ino), nil
}

// stampValid reports whether the index describes the directory as it is.
func (d *Disk) stampValid() bool {
	got, err := os.ReadFile(d.indexPath(stampName))
	if err != nil {
		return false
	}
	now, err := d.dirStamp()
	return err == nil && string(got) == now
}

// restamp records the directory's state after a change of ours. It is not
// fsynced: losing it only costs a rebuild.
func (d *Disk) restamp() error {
	now, err := d.dirStamp()
	if err != nil {
		return err
	}
	return writeInPlace(d.indexPath(stampName), now)
}

// ensureIndex makes the index trustworthy for the rest of this lock hold,
// rebuilding it when the stamp does not match.
func (d *Disk) ensureIndex() error {
	if d.indexOK {
		return nil
	}
	rs, err := d.scan()
	if err != nil {
		return err
	}
	if err := os.RemoveAll(d.indexPath()); err != nil {
		return fmt.Errorf("rebuild owner index: %w", err)
	}
	if err := os.Mkdir(d.indexPath(), dirPerm); err != nil {
		return fmt.Errorf("rebuild owner index: %w", err)
	}
	for _, r := range rs {
		if r.Owner == (Owner{}) {
			continue // empty or torn file: nobody to find it for
		}
		if err := d.indexAdd(r.Owner, r.IP); err != nil {
			return fmt.Errorf("rebuild owner index: %w", err)
		}
	}
	// The mkdir above changed the store directory; stamp after it.
	if err := d.restamp(); err != nil {
		return fmt.Errorf("rebuild owner index: %w", err)
	}
	d.indexOK = true
	return nil
}

// indexAdd records that owner holds ip.
func (d *Disk) indexAdd(o Owner, ip net.IP) error {
	dir := d.indexPath(ownerKey(o))
	if err := os.Mkdir(dir, dirPerm); err != nil && !errors.Is(err, fs.ErrExist) {
		return err
	}
	err := os.Symlink(filepath.Join("..", "..", ip.String()), filepath.Join(dir, ip.String()))
	if errors.Is(err, fs.ErrExist) {
		return nil
	}
	return err
}

// indexDel forgets that owner holds ip; what is already gone is fine.
func (d *Disk) indexDel(o Owner, ip net.IP) {
	dir := d.indexPath(ownerKey(o))
	_ = os.Remove(filepath.Join(dir, ip.String()))
	_ = os.Remove(dir) // fails while the owner holds other addresses
}

// indexed returns the addresses the index lists under owner's key whose
// reservation file still names a record match accepts.
func (d *Disk) indexed(key Owner, match func(rec Owner) bool) ([]net.IP, error) {
	des, err := os.ReadDir(d.indexPath(ownerKey(key)))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var ips []net.IP
	for _, de := range des {
		ip := addressName(de.Name())
		if ip == nil {
			continue
		}
		rec, ok, err := d.owner(entry{ip: ip, name: de.Name(), regular: true})
		if err != nil {
			return nil, err
		}
		if !ok || !match(rec) {
			d.indexDel(key, ip) // stale: the reservation went or changed hands
			continue
		}
		ips = append(ips, ip)
	}
	return ips, nil
}

// byOwner returns owner's exact records and, separately, the legacy
// records (container ID only) that also match it.
func (d *Disk) byOwner(owner Owner) (exact, legacy []net.IP, err error) {
	if err := d.ensureIndex(); err != nil {
		return nil, nil, err
	}
	exact, err = d.indexed(owner, func(rec Owner) bool { return exactMatch(rec, owner) })
	if err != nil || owner.IfName == "" {
		return exact, nil, err
	}
	legacy, err = d.indexed(Owner{ContainerID: owner.ContainerID}, func(rec Owner) bool { return legacyMatch(rec, owner) })
	return exact, legacy, err
}

// restampAfterChange records a change of ours, if the index was current
// before it; otherwise the next ensureIndex rebuilds anyway.
func (d *Disk) restampAfterChange() {
	if !d.indexOK {
		return
	}
	if err := d.restamp(); err != nil {
		d.indexOK = false // best effort: the next holder rebuilds
	}
}
