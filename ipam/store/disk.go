package store

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/plumbnet/plumb/internal/crashpoint"
	"github.com/plumbnet/plumb/internal/flock"
)

// On-disk layout, shared with the reference host-local (do not change):
// dataDir/network/<ip.String()> holds "containerID\r\nifname" (or, from old
// versions, just the container ID), last_reserved_ip.<rangeID> holds an
// address, and flock(2) on the file "lock" serialises every writer.
const (
	lockName     = "lock"
	lastIPPrefix = "last_reserved_ip."
	lineBreak    = "\r\n"
)

// tmpPrefix marks our half-written files. Readers skip them and Lock removes
// them: writers hold the lock, so one found by a new holder is from a crash.
const tmpPrefix = ".plumb-tmp-"

// Owner-only permissions: reservation files name containers, and nobody but
// the runtime (root) has business reading or writing them.
const (
	dirPerm  = 0o700
	filePerm = 0o600
)

// maxNameLen is NAME_MAX on Linux filesystems.
const maxNameLen = 255

// Disk is the reference-compatible on-disk Store. Reservations are created
// with link(2) from a complete, fsynced temporary file so a crash can never
// leave a torn reservation of ours.
type Disk struct {
	dir      string
	lockPath string
	unlock   func()   // set while the lock is held
	dirFile  *os.File // kept open to fsync the directory after changes
	indexOK  bool     // the owner index matches the directory, this lock hold
}

var _ Store = (*Disk)(nil)

// NewDisk opens (creating if needed) the store for network under dataDir.
// dataDir must be absolute and clean and network a single path element, so
// the store can never reach outside dataDir whatever the config says.
func NewDisk(dataDir, network string) (*Disk, error) {
	if err := validateNetworkName(network); err != nil {
		return nil, err
	}
	if !filepath.IsAbs(dataDir) || filepath.Clean(dataDir) != dataDir {
		return nil, fmt.Errorf("IPAM data directory %q must be an absolute, clean path", dataDir)
	}
	dir := filepath.Join(dataDir, network)
	if parent := filepath.Dir(dir); parent != dataDir {
		return nil, fmt.Errorf("IPAM store %q escapes data directory %q", dir, dataDir)
	}
	if err := os.MkdirAll(dir, dirPerm); err != nil {
		return nil, fmt.Errorf("create IPAM store directory: %w", err)
	}
	dirFile, err := os.Open(dir)
	if err != nil {
		return nil, fmt.Errorf("open IPAM store directory: %w", err)
	}
	// The lock file exists from the start, as with the reference store.
	lockPath := filepath.Join(dir, lockName)
	f, err := os.OpenFile(lockPath, os.O_RDONLY|os.O_CREATE, filePerm)
	if err != nil {
		dirFile.Close()
		return nil, fmt.Errorf("open IPAM store lock: %w", err)
	}
	f.Close()
	return &Disk{dir: dir, lockPath: lockPath, dirFile: dirFile}, nil
}

// validateNetworkName accepts exactly one path element.
func validateNetworkName(network string) error {
	switch {
	case network == "":
		return errors.New("invalid network name: empty")
	case network == "." || network == "..":
		return fmt.Errorf("invalid network name %q: not a directory name", network)
	case strings.ContainsAny(network, "/\x00"):
		return fmt.Errorf("invalid network name %q: contains '/' or NUL", network)
	case len(network) > maxNameLen:
		return fmt.Errorf("invalid network name %.16q...: longer than %d bytes", network, maxNameLen)
	}
	return nil
}

// Dir is the directory holding this network's state.
func (d *Disk) Dir() string { return d.dir }

// Lock takes the flock on the reference's lock file, waiting until ctx
// ends, then clears temp files only a crashed writer can have left.
func (d *Disk) Lock(ctx context.Context) error {
	if d.unlock != nil {
		return fmt.Errorf("lock %s: already held by this store", d.lockPath)
	}
	unlock, err := flock.Acquire(ctx, d.lockPath)
	if err != nil {
		if errors.Is(err, flock.ErrTimeout) {
			return fmt.Errorf("lock %s: %w: %w", d.lockPath, ErrLockTimeout, err)
		}
		return fmt.Errorf("lock %s: %w", d.lockPath, err)
	}
	d.unlock = unlock
	// Only a writer that crashed before restamping leaves temp files, and
	// then the stamp no longer matches: a clean store costs no listing.
	if d.indexOK = d.stampValid(); !d.indexOK {
		d.removeTemps()
	}
	return nil
}

// Unlock releases the flock; unlocking an unlocked store does nothing.
func (d *Disk) Unlock() error {
	if d.unlock != nil {
		d.unlock()
		d.unlock = nil
	}
	d.indexOK = false
	return nil
}

// removeTemps deletes leftovers of a crashed writer. It is best effort:
// readers ignore temp files, so one that cannot be removed does no harm.
func (d *Disk) removeTemps() {
	entries, err := os.ReadDir(d.dir)
	if err != nil {
		return
	}
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), tmpPrefix) {
			_ = os.Remove(filepath.Join(d.dir, e.Name()))
		}
	}
}

// Close releases the lock, if held, and the directory handle.
func (d *Disk) Close() error {
	d.Unlock()
	return d.dirFile.Close()
}

// Reserve implements Store.
func (d *Disk) Reserve(owner Owner, ip net.IP, rangeID string) (bool, error) {
	owner, err := normalizeOwner(owner)
	if err != nil {
		return false, fmt.Errorf("reserve %v in %s: %w", ip, d.dir, err)
	}
	if ip, err = canonicalIP(ip); err != nil {
		return false, fmt.Errorf("reserve in %s: %w", d.dir, err)
	}
	if err := validateRangeID(rangeID); err != nil {
		return false, fmt.Errorf("reserve %s in %s: %w", ip, d.dir, err)
	}
	name := ip.String()
	path := filepath.Join(d.dir, name)

	// Most candidates the allocator tries in a busy range are taken; a
	// stat answers that without writing a temp file.
	if _, err := os.Lstat(path); err == nil {
		return false, nil
	} else if !errors.Is(err, fs.ErrNotExist) {
		return false, fmt.Errorf("reserve %s in %s: %w", ip, d.dir, err)
	}

	// The index entry comes first: a crash then leaves an entry without a
	// reservation, which lookups ignore, never a reservation the index
	// cannot find.
	if err := d.ensureIndex(); err != nil {
		return false, fmt.Errorf("reserve %s in %s: %w", ip, d.dir, err)
	}
	if err := d.indexAdd(owner, ip); err != nil {
		return false, fmt.Errorf("reserve %s in %s: owner index: %w", ip, d.dir, err)
	}
	created, err := d.createExclusive(name, owner.ContainerID+lineBreak+owner.IfName)
	if err != nil || !created {
		d.indexDel(owner, ip)
		if err != nil {
			err = fmt.Errorf("reserve %s in %s: %w", ip, d.dir, err)
		}
		return false, err
	}
	// A false/error return must leave no reservation behind, so undo the
	// link if recording the last IP or making it durable fails.
	undo := func() {
		_ = os.Remove(path)
		d.indexDel(owner, ip)
	}
	if err := writeInPlace(filepath.Join(d.dir, lastIPPrefix+rangeID), name); err != nil {
		undo()
		return false, fmt.Errorf("reserve %s in %s: record last reserved IP: %w", ip, d.dir, err)
	}
	crashpoint.Here("store.reserve.last")
	if err := d.dirFile.Sync(); err != nil {
		undo()
		return false, fmt.Errorf("reserve %s in %s: sync directory: %w", ip, d.dir, err)
	}
	d.restampAfterChange()
	return true, nil
}

// writeTemp writes content to a new temp file in the store directory,
// fsynced when durable, and returns its path.
func (d *Disk) writeTemp(content string, durable bool) (string, error) {
	f, err := os.CreateTemp(d.dir, tmpPrefix+"*") // mode 0600
	if err != nil {
		return "", err
	}
	_, err = f.WriteString(content)
	if err == nil && durable {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		_ = os.Remove(f.Name())
		return "", err
	}
	return f.Name(), nil
}

// createExclusive makes name hold content, or reports false if name exists.
// link(2) fails with EEXIST rather than replacing, so the file appears
// complete or not at all.
func (d *Disk) createExclusive(name, content string) (bool, error) {
	tmp, err := d.writeTemp(content, true)
	if err != nil {
		return false, err
	}
	defer os.Remove(tmp)
	crashpoint.Here("store.reserve.temp")
	if err := os.Link(tmp, filepath.Join(d.dir, name)); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return false, nil
		}
		return false, err
	}
	crashpoint.Here("store.reserve.linked")
	return true, nil
}

// writeInPlace overwrites the file at path with content, keeping its inode.
// It is used only where a torn write is safe: the last reserved address (a
// hint, which a torn copy turns into "none", costing a scan from the start)
// and the owner index's stamp (a torn stamp matches nothing, costing a
// rebuild). A temp file and a rename for each would take two new inodes on
// every ADD, and with a store that churns ext4 searches its inode bitmap
// past recently freed inodes for each one, a measurable share of an ADD's
// CPU. No fsync either: a power cut costs at most that scan or rebuild.
func writeInPlace(path, content string) error {
	open := func() (*os.File, error) {
		return os.OpenFile(path, os.O_WRONLY|os.O_CREATE|syscall.O_NOFOLLOW, 0o600)
	}
	f, err := open()
	if errors.Is(err, syscall.ELOOP) { // a symlink left by an earlier version
		_ = os.Remove(path)
		f, err = open()
	}
	if err != nil {
		return err
	}
	_, err = f.WriteAt([]byte(content), 0)
	if err == nil {
		err = f.Truncate(int64(len(content)))
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// LastReservedIP implements Store.
func (d *Disk) LastReservedIP(rangeID string) (net.IP, error) {
	if err := validateRangeID(rangeID); err != nil {
		return nil, fmt.Errorf("last reserved IP in %s: %w", d.dir, err)
	}
	data, err := os.ReadFile(filepath.Join(d.dir, lastIPPrefix+rangeID))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("last reserved IP in %s: %w", d.dir, err)
	}
	ip := net.ParseIP(strings.TrimSpace(string(data)))
	if v4 := ip.To4(); v4 != nil {
		ip = v4
	}
	return ip, nil
}

// entry is one directory entry that names a reservation.
type entry struct {
	ip      net.IP
	name    string
	regular bool
}

// entries lists reservations without reading them. Only canonical address
// names count: those are the only names Reserve checks and Release removes,
// so anything else (lock, last_reserved_ip.*, temp files, strays) is not a
// reservation.
func (d *Disk) entries() ([]entry, error) {
	des, err := os.ReadDir(d.dir)
	if err != nil {
		return nil, err
	}
	out := make([]entry, 0, len(des))
	for _, de := range des {
		if ip := addressName(de.Name()); ip != nil {
			out = append(out, entry{ip: ip, name: de.Name(), regular: de.Type().IsRegular()})
		}
	}
	return out, nil
}

// addressName returns the address a file name canonically spells, or nil.
func addressName(name string) net.IP {
	ip := net.ParseIP(name)
	if ip == nil || ip.String() != name {
		return nil
	}
	if v4 := ip.To4(); v4 != nil {
		ip = v4
	}
	return ip
}

// owner reads who holds e. An empty or truncated file still yields a record
// (with an empty or partial owner) so the address is not handed out again.
// Non-regular entries are not read but still block the address. ok is false
// when the file vanished since it was listed.
func (d *Disk) owner(e entry) (o Owner, ok bool, err error) {
	if !e.regular {
		return Owner{}, true, nil
	}
	data, err := os.ReadFile(filepath.Join(d.dir, e.name))
	if errors.Is(err, fs.ErrNotExist) {
		return Owner{}, false, nil
	}
	if err != nil {
		return Owner{}, false, err
	}
	s := strings.TrimSpace(string(data))
	id, ifname, _ := strings.Cut(s, lineBreak)
	return Owner{ContainerID: id, IfName: ifname}, true, nil
}

// scan reads every reservation. Owner lookups must read every file because
// the format keys files by address only.
func (d *Disk) scan() ([]Reservation, error) {
	es, err := d.entries()
	if err != nil {
		return nil, err
	}
	out := make([]Reservation, 0, len(es))
	for _, e := range es {
		o, ok, err := d.owner(e)
		if err != nil {
			return nil, err
		}
		if ok {
			out = append(out, Reservation{IP: e.ip, Owner: o})
		}
	}
	sortReservations(out)
	return out, nil
}

// GetByOwner implements Store.
func (d *Disk) GetByOwner(owner Owner) ([]net.IP, error) {
	owner, err := normalizeOwner(owner)
	if err != nil {
		return nil, fmt.Errorf("get addresses in %s: %w", d.dir, err)
	}
	exact, legacy, err := d.byOwner(owner)
	if err != nil {
		return nil, fmt.Errorf("get addresses of %s in %s: %w", owner, d.dir, err)
	}
	ips := append(exact, legacy...)
	sortIPs(ips)
	return ips, nil
}

// OwnerOf implements Store.
func (d *Disk) OwnerOf(ip net.IP) (Owner, bool, error) {
	ip, err := canonicalIP(ip)
	if err != nil {
		return Owner{}, false, fmt.Errorf("owner of address in %s: %w", d.dir, err)
	}
	o, ok, err := d.owner(entry{ip: ip, name: ip.String(), regular: true})
	if err != nil {
		return Owner{}, false, fmt.Errorf("owner of %s in %s: %w", ip, d.dir, err)
	}
	return o, ok, nil
}

// ReleaseByOwner implements Store: exact records first, legacy ones only
// when there are none (the reference's rule). It removes all it can and
// reports every failure.
func (d *Disk) ReleaseByOwner(owner Owner) ([]net.IP, error) {
	owner, err := normalizeOwner(owner)
	if err != nil {
		return nil, fmt.Errorf("release addresses in %s: %w", d.dir, err)
	}
	victims, legacy, err := d.byOwner(owner)
	if err != nil {
		return nil, fmt.Errorf("release addresses of %s in %s: %w", owner, d.dir, err)
	}
	key := owner
	if len(victims) == 0 {
		victims, key = legacy, Owner{ContainerID: owner.ContainerID}
	}
	sortIPs(victims)
	var released []net.IP
	var errs []error
	for _, ip := range victims {
		if err := d.remove(ip); err != nil {
			errs = append(errs, fmt.Errorf("release %s of %s in %s: %w", ip, owner, d.dir, err))
			continue
		}
		d.indexDel(key, ip)
		released = append(released, ip)
	}
	if len(released) > 0 {
		if err := d.dirFile.Sync(); err != nil {
			errs = append(errs, fmt.Errorf("release addresses of %s in %s: sync directory: %w", owner, d.dir, err))
		}
		d.restampAfterChange()
	}
	return released, errors.Join(errs...)
}

// remove deletes ip's file; an absent file is already released.
func (d *Disk) remove(ip net.IP) error {
	err := os.Remove(filepath.Join(d.dir, ip.String()))
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	return err
}

// Release implements Store.
func (d *Disk) Release(ip net.IP) error {
	ip, err := canonicalIP(ip)
	if err != nil {
		return fmt.Errorf("release in %s: %w", d.dir, err)
	}
	rec, held, err := d.owner(entry{ip: ip, name: ip.String(), regular: true})
	if err != nil {
		held = false // unreadable: remove it all the same; a rebuild fixes the index
	}
	if err := d.remove(ip); err != nil {
		return fmt.Errorf("release %s in %s: %w", ip, d.dir, err)
	}
	if held {
		d.indexDel(rec, ip)
	}
	if err := d.dirFile.Sync(); err != nil {
		return fmt.Errorf("release %s in %s: sync directory: %w", ip, d.dir, err)
	}
	if held {
		d.restampAfterChange()
	}
	return nil
}

// List implements Store.
func (d *Disk) List() ([]Reservation, error) {
	rs, err := d.scan()
	if err != nil {
		return nil, fmt.Errorf("list reservations in %s: %w", d.dir, err)
	}
	return rs, nil
}
