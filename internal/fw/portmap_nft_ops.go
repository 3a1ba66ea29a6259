package fw

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// Changes to the shared maps, and the calls that read or remove an owner:
// DEL, GC and CHECK of the nftables PortMapper.

// pmOps are changes to the shared maps, per map in three steps: additions
// (including the "add mine" of a conditional delete), deletions, then
// additions of deleted keys to their new holder.
type pmOps struct {
	add, del, then [4][]nftables.SetElement
}

func goTo(chain string) *expr.Verdict { return &expr.Verdict{Kind: expr.VerdictGoto, Chain: chain} }

// pre adds key -> chain in the first step.
func (o *pmOps) pre(key portKey, chain string) {
	k := kindOf(key)
	o.add[k] = append(o.add[k], nftables.SetElement{Key: key.nftKey(), VerdictData: goTo(chain)})
}

// drop deletes key.
func (o *pmOps) drop(key portKey) {
	k := kindOf(key)
	o.del[k] = append(o.del[k], nftables.SetElement{Key: key.nftKey()})
}

// move gives key, held by someone else, to chain.
func (o *pmOps) move(key portKey, chain string) {
	k := kindOf(key)
	o.drop(key)
	o.then[k] = append(o.then[k], nftables.SetElement{Key: key.nftKey(), VerdictData: goTo(chain)})
}

// release lets chain's key go. holders nil: the holder is unknown, delete
// the key if chain holds it (conditional delete). Otherwise a key chain
// holds goes to the first of prev that is not going too and still publishes
// it, or is deleted; a key someone else holds is left alone.
func (o *pmOps) release(s *nftSession, chain string, key portKey, prev []string, holders map[portKey]string, going map[string]bool) error {
	h, known := holders[key]
	switch {
	case !known:
		o.pre(key, chain)
		o.drop(key)
	case h == chain:
		next, err := s.successor(chain, key, prev, going)
		if err != nil {
			return err
		}
		if next != "" {
			o.move(key, next)
		} else {
			o.drop(key)
		}
	}
	return nil
}

func (o *pmOps) queue(s *nftSession) error {
	for _, k := range pmKinds {
		set := pmSharedMap(k)
		for _, step := range []struct {
			elems []nftables.SetElement
			fn    func(*nftables.Set, []nftables.SetElement) error
		}{{o.add[k], s.conn.SetAddElements}, {o.del[k], s.conn.SetDeleteElements}, {o.then[k], s.conn.SetAddElements}} {
			if len(step.elems) == 0 {
				continue
			}
			if err := inChunks(set, step.elems, step.fn); err != nil {
				return fmt.Errorf("change map %s: %w", k, err)
			}
		}
	}
	return nil
}

// pmChunk elements go in one message: its element list is one netlink
// attribute, whose length (16 bits) a few hundred elements would overflow.
const pmChunk = 256

func inChunks(set *nftables.Set, elems []nftables.SetElement, fn func(*nftables.Set, []nftables.SetElement) error) error {
	for len(elems) > 0 {
		n := min(len(elems), pmChunk)
		if err := fn(set, elems[:n]); err != nil {
			return err
		}
		elems = elems[n:]
	}
	return nil
}

// lookupAll finds the holder of each key ("" when free), many lookups to
// a netlink round trip.
func (s *nftSession) lookupAll(keys []portKey) (map[portKey]string, error) {
	qs := make([]elemQuery, len(keys))
	for i, k := range keys {
		qs[i] = elemQuery{set: kindOf(k).String(), key: k.nftKey()}
	}
	elems, err := s.rd.lookupElements(pmTable, qs)
	if err != nil {
		return nil, err
	}
	holders := make(map[portKey]string, len(keys))
	for i, k := range keys {
		holders[k] = ""
		if elems[i] != nil {
			holders[k] = elems[i].chain
		}
	}
	return holders, nil
}

// queueDelOwner queues the deletion of chain and its maps (after its
// rules, which refer to the maps).
func (s *nftSession) queueDelOwner(chain string, st pmOwnerState) {
	if st.chainExists {
		c := &nftables.Chain{Name: chain, Table: s.table}
		s.conn.FlushChain(c)
		s.conn.DelChain(c)
	}
	for _, k := range pmKinds {
		if st.maps[k] {
			s.conn.DelSet(pmOwnerMap(chain, k, ""))
		}
	}
}

// DelPorts removes the owner's chain and maps and releases its keys. Round
// trips: a chain lookup; when the owner exists, a dump per map, the lookup
// of its keys in the shared maps (64 to a round trip), then one transaction
// that deletes only what is the owner's. That transaction adds no jump, so
// the kernel does not revalidate the table, whose size grows with the
// number of containers.
func (m *NFTPorts) DelPorts(ctx context.Context, owner Owner) ([]PortMapping, error) {
	if err := reclassify(validateOwner(owner)); err != nil {
		return nil, err
	}
	label, chain := owner.label(), pmOwnerChain(owner)
	fail := func(err error) error { return fmt.Errorf("remove published ports of %s: %w", label, err) }
	release, err := lockFile(ctx, m.LockPath)
	if err != nil {
		return nil, fail(err)
	}
	defer release()
	s, err := openPM()
	if err != nil {
		return nil, fail(err)
	}
	defer s.close()
	st, err := s.ownerState(chain)
	if err != nil {
		return nil, fail(err)
	}
	if !st.chainExists {
		return nil, nil // maps are only made with their chain, in one transaction
	}
	keys := st.keys()
	// Up to a round trip's worth of keys, look them up; more, try "add
	// mine, then delete" first (a key someone else holds makes the kernel
	// refuse it, and then they are looked up), which costs a revalidation
	// of the table but not a lookup per key.
	var holders map[portKey]string // nil: conditional deletes
	if len(keys) <= lookupChunk {
		if holders, err = s.lookupAll(keys); err != nil {
			return nil, fail(err)
		}
	}
	for _, e := range st.elems {
		if len(e.prev) > 0 && holders == nil {
			if holders, err = s.lookupAll(keys); err != nil {
				return nil, fail(err)
			}
		}
	}
	for {
		var ops pmOps
		for _, k := range keys {
			if err := ops.release(s, chain, k, st.elems[k].prev, holders, nil); err != nil {
				return nil, fail(err)
			}
		}
		if err := ops.queue(s); err != nil {
			return nil, fail(err)
		}
		s.queueDelOwner(chain, st)
		err = s.conn.Flush()
		if err == nil {
			return st.mappings(), nil
		}
		if holders != nil || !errors.Is(err, unix.EEXIST) {
			return nil, fail(fmt.Errorf("chain %s: %w", chain, noNFTables(err)))
		}
		if holders, err = s.lookupAll(keys); err != nil {
			return nil, fail(err)
		}
	}
}

// GCPorts removes every owner chain of network whose owner is not in keep,
// with its maps, and releases the keys they hold: one chain listing, one
// set listing, a dump of each shared map, one lookup per released key that
// has earlier claimants, one transaction.
func (m *NFTPorts) GCPorts(ctx context.Context, network string, keep []Owner) error {
	fail := func(err error) error { return fmt.Errorf("gc published ports of network %s: %w", network, err) }
	release, err := lockFile(ctx, m.LockPath)
	if err != nil {
		return fail(err)
	}
	defer release()
	s, err := openPM()
	if err != nil {
		return fail(err)
	}
	defer s.close()
	chains, err := s.conn.ListChainsOfTableFamily(nftables.TableFamilyINet)
	if err != nil {
		return fail(fmt.Errorf("list chains: %w", noNFTables(err)))
	}
	prefix, kept := pmNetPrefix(network), keepHashes(inNetwork(network, keep))
	going := map[string]bool{}
	for _, c := range chains {
		if c.Table == nil || c.Table.Name != pmTable || !strings.HasPrefix(c.Name, prefix) {
			continue
		}
		if h := strings.TrimPrefix(c.Name, prefix); !strings.Contains(h, "-") && !kept[h] {
			going[c.Name] = true
		}
	}
	if len(going) == 0 {
		return nil
	}
	states := map[string]pmOwnerState{}
	for c := range going {
		if states[c], err = s.ownerState(c); err != nil {
			return fail(err)
		}
	}
	var ops pmOps
	for _, k := range pmKinds {
		elems, err := s.rd.elements(pmTable, k.String())
		if err != nil {
			return fail(fmt.Errorf("list map %s: %w", k, err))
		}
		for _, e := range elems {
			if !going[e.chain] {
				continue
			}
			key, ok := pmDecodeKey(k, e.key)
			if !ok {
				continue
			}
			holders := map[portKey]string{key: e.chain}
			if err := ops.release(s, e.chain, key, states[e.chain].elems[key].prev, holders, going); err != nil {
				return fail(err)
			}
		}
	}
	if err := ops.queue(s); err != nil {
		return fail(err)
	}
	for _, c := range sortedKeys(going) {
		s.queueDelOwner(c, states[c])
	}
	if err := s.conn.Flush(); err != nil {
		return fail(fmt.Errorf("delete chains %s: %w", strings.Join(sortedKeys(going), ", "), noNFTables(err)))
	}
	return nil
}

// CheckPorts compares the base, the owner's chain and maps, and the holder
// of each key with the design.
func (m *NFTPorts) CheckPorts(ctx context.Context, rule PortRule) error {
	p, err := parsePortRule(rule)
	if err != nil {
		return err
	}
	if err := nftOnly(p); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	label, chain := rule.Owner.label(), pmOwnerChain(rule.Owner)
	s, err := openPM()
	if err != nil {
		return fmt.Errorf("check published ports of %s: %w", label, err)
	}
	defer s.close()
	d, err := s.checkPorts(p, chain)
	if err != nil {
		return fmt.Errorf("check published ports of %s: %w", label, err)
	}
	if d != "" {
		return fmt.Errorf("check published ports of %s: %w: %s", label, ErrPortsMismatch, d)
	}
	return nil
}

func (s *nftSession) checkPorts(p portPlan, chain string) (string, error) {
	if len(p.maps) == 0 {
		st, err := s.ownerState(chain)
		if err != nil || !st.chainExists {
			return "", err
		}
		return fmt.Sprintf("chain inet %s %s exists, but nothing is published", pmTable, chain), nil
	}
	mark := uint32(0)
	if p.snat {
		mark = p.mark
	}
	if d, err := s.pmBaseDiff(mark); d != "" || err != nil {
		return d, err
	}
	got, exists, err := s.rules(chain)
	if err != nil {
		return "", err
	}
	if !exists {
		return fmt.Sprintf("chain inet %s %s is missing", pmTable, chain), nil
	}
	if d := diffRules(textsOf(pmOwnerRules(p, chain)), got); d != "" {
		return fmt.Sprintf("chain %s: %s", chain, d), nil
	}
	st, err := s.ownerState(chain)
	if err != nil {
		return "", err
	}
	used := p.kinds()
	for _, k := range pmKinds {
		if used[k] && !st.maps[k] {
			return fmt.Sprintf("map inet %s %s is missing", pmTable, pmOwnerMapName(chain, k)), nil
		}
		if !used[k] && st.maps[k] {
			return fmt.Sprintf("unexpected map inet %s %s", pmTable, pmOwnerMapName(chain, k)), nil
		}
	}
	for _, mp := range p.maps {
		e, ok := st.elems[mp.key]
		if !ok {
			return fmt.Sprintf("%s is missing from map %s", mp.key, pmOwnerMapName(chain, kindOf(mp.key))), nil
		}
		if !e.ctrIP.Equal(mp.ctrIP) || e.port != mp.ctrPort {
			return fmt.Sprintf("%s goes to %s, want %s", mp.key,
				net.JoinHostPort(e.ctrIP.String(), fmt.Sprint(e.port)), net.JoinHostPort(mp.ctrIP.String(), fmt.Sprint(mp.ctrPort))), nil
		}
	}
	if len(st.elems) != len(p.maps) {
		for _, k := range st.keys() {
			if !p.has(k) {
				return fmt.Sprintf("unexpected %s in the owner's maps", k), nil
			}
		}
	}
	keys := make([]portKey, len(p.maps))
	for i, mp := range p.maps {
		keys[i] = mp.key
	}
	holders, err := s.lookupAll(keys)
	if err != nil {
		return "", err
	}
	for _, mp := range p.maps {
		switch h := holders[mp.key]; h {
		case chain:
		case "":
			return fmt.Sprintf("%s is not published (no element in map %s)", mp.key, kindOf(mp.key)), nil
		default:
			return fmt.Sprintf("%s is published by %s", mp.key, s.ownerLabel(h)), nil
		}
	}
	return "", nil
}

// ownerLabel names the owner of chain by its maps' comment, or the chain.
func (s *nftSession) ownerLabel(chain string) string {
	for _, k := range pmKinds {
		c, ok, err := s.rd.setComment(pmTable, pmOwnerMapName(chain, k))
		if err != nil || !ok {
			continue
		}
		if f := strings.Fields(c); len(f) >= 4 && f[0] == "plumb" {
			return strings.Join(f[2:], "/") + " (chain " + chain + ")"
		}
	}
	return "chain " + chain
}
