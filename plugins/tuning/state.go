package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/containernetworking/cni/pkg/utils"

	"github.com/plumbnet/plumb/internal/cniplugin"
)

// record is what ADD saved for one attachment: the values it replaced and
// their owner. The owner fields are plumb's; the reference plugin's files
// have none, and its reader ignores them.
type record struct {
	Settings
	Network     string `json:"network,omitempty"`
	ContainerID string `json:"containerID,omitempty"`
	IfName      string `json:"ifName,omitempty"`
}

// owns reports whether r belongs to the attachment; a reference-format
// record names no owner and is taken as belonging to its file's name.
func (r *record) owns(containerID, ifname string) bool {
	return r.ContainerID == "" || r.ContainerID == containerID && r.IfName == ifname
}

// store keeps one file per attachment named as the reference plugin names
// it, <container ID>_<ifname>.json, so a node can switch between the two
// plugins with containers running.
type store struct{ dir string }

const (
	tmpMarker = ".tmp-"
	// staleTmp is how old an unrenamed temp file (left by a crash between
	// write and rename) must be before GC removes it.
	staleTmp = 10 * time.Minute
)

// path is the attachment's file; both parts are validated so the name can
// never leave the directory.
func (s store) path(containerID, ifname string) (string, error) {
	if e := utils.ValidateContainerID(containerID); e != nil {
		return "", cniplugin.Errorf(cniplugin.CodeInvalidEnv, "container ID %q: %s", containerID, e.Msg)
	}
	if e := utils.ValidateInterfaceName(ifname); e != nil {
		return "", cniplugin.Errorf(cniplugin.CodeInvalidEnv, "interface name %q: %s", ifname, e.Msg)
	}
	name := containerID + "_" + ifname + ".json"
	if filepath.Base(name) != name || strings.HasPrefix(name, ".") {
		return "", cniplugin.Errorf(cniplugin.CodeInvalidEnv, "state file name %q is not a plain file name", name)
	}
	return filepath.Join(s.dir, name), nil
}

// load returns the attachment's record, nil when there is none.
func (s store) load(containerID, ifname string) (*record, error) {
	p, err := s.path(containerID, ifname)
	if err != nil {
		return nil, err
	}
	return readRecord(p)
}

func readRecord(p string) (*record, error) {
	b, err := os.ReadFile(p)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, cniplugin.WithCode(cniplugin.CodeIO, fmt.Errorf("read saved state %s: %w", p, err))
	}
	var r record
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, cniplugin.WithCode(cniplugin.CodeIO, fmt.Errorf("saved state %s is corrupt: %w", p, err))
	}
	return &r, nil
}

// save writes r atomically: a temp file in the same directory, fsync,
// rename over the old file, fsync of the directory. Readers never see a torn
// file, and only root can read or list it.
func (s store) save(r *record) error {
	p, err := s.path(r.ContainerID, r.IfName)
	if err != nil {
		return err
	}
	b, err := json.MarshalIndent(r, "", " ")
	if err != nil {
		return fmt.Errorf("encode saved state: %w", err)
	}
	if err := os.MkdirAll(s.dir, 0o700); err != nil {
		return cniplugin.WithCode(cniplugin.CodeIO, fmt.Errorf("create state directory %s: %w", s.dir, err))
	}
	f, err := os.CreateTemp(s.dir, "."+filepath.Base(p)+tmpMarker+"*") // mode 0600
	if err != nil {
		return cniplugin.WithCode(cniplugin.CodeIO, fmt.Errorf("create temp file in %s: %w", s.dir, err))
	}
	tmp := f.Name()
	_, err = f.Write(b)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, p)
	}
	if err != nil {
		os.Remove(tmp)
		return cniplugin.WithCode(cniplugin.CodeIO, fmt.Errorf("write saved state %s: %w", p, err))
	}
	if d, err := os.Open(s.dir); err == nil {
		d.Sync()
		d.Close()
	}
	return nil
}

// remove forgets the attachment's record; absent is success.
func (s store) remove(containerID, ifname string) error {
	p, err := s.path(containerID, ifname)
	if err != nil {
		return err
	}
	if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return cniplugin.WithCode(cniplugin.CodeIO, fmt.Errorf("remove saved state %s: %w", p, err))
	}
	return nil
}

// gc removes the records of network whose attachment is not in keep, and
// temp files a crash left behind. Records without an owner (written by the
// reference plugin) name no network, so they are left alone.
func (s store) gc(network string, keep map[cniplugin.Attachment]bool, now time.Time) error {
	entries, err := os.ReadDir(s.dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return cniplugin.WithCode(cniplugin.CodeIO, fmt.Errorf("list %s: %w", s.dir, err))
	}
	var errs []error
	for _, e := range entries {
		name := e.Name()
		p := filepath.Join(s.dir, name)
		if !e.Type().IsRegular() {
			continue
		}
		if strings.HasPrefix(name, ".") && strings.Contains(name, tmpMarker) {
			if info, err := e.Info(); err == nil && now.Sub(info.ModTime()) > staleTmp {
				os.Remove(p)
			}
			continue
		}
		if !strings.HasSuffix(name, ".json") {
			continue
		}
		r, err := readRecord(p)
		if err != nil || r == nil {
			continue // unreadable: not provably ours to delete
		}
		if r.Network != network || r.ContainerID == "" {
			continue
		}
		if keep[cniplugin.Attachment{ContainerID: r.ContainerID, IfName: r.IfName}] {
			continue
		}
		if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, fmt.Errorf("remove saved state %s: %w", p, err))
		}
	}
	return errors.Join(errs...)
}
