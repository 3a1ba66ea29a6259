package fw

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"sort"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
)

// The calls of the nftables PortMapper: what they read (exact-key lookups,
// many to a round trip) and the one transaction each queues.

// pmQuery collects element lookups to send together.
type pmQuery struct{ qs []elemQuery }

// add asks for the element of set with key; the answer is at the index
// returned.
func (q *pmQuery) add(set string, key []byte) int {
	q.qs = append(q.qs, elemQuery{set: set, key: key})
	return len(q.qs) - 1
}

func (s *nftSession) run(q *pmQuery) ([]*vmapElem, error) {
	if len(q.qs) == 0 {
		return nil, nil
	}
	return s.rd.lookupElements(pmTable, q.qs)
}

// pmHeld is an element of a shared map: who holds the key, and the target.
type pmHeld struct {
	holder string
	data   []byte
}

func heldOf(e *vmapElem) *pmHeld {
	if e == nil {
		return nil
	}
	return &pmHeld{holder: strings.TrimSpace(e.comment), data: e.data}
}

// claimOf reads a claims map element of key k; nil when absent or not
// understood.
func claimOf(k portKey, e *vmapElem) *pmClaim {
	if e == nil {
		return nil
	}
	ip, port, ok := pmDecodeTarget(k.fam, e.data)
	if !ok {
		return nil
	}
	c := &pmClaim{key: k, ctrIP: ip, port: port}
	c.parseComment(e.comment)
	return c
}

// pmOwnerState is what the kernel has of one owner.
type pmOwnerState struct {
	exists  bool
	count   int                  // claims the owners map counts
	comment string               // the owner element's comment
	mine    map[portKey]*pmClaim // every claim of the owner
	held    map[portKey]*pmHeld  // the holder of each key asked about or claimed
}

// readOwner reads the owner's element, its claims and the holders of keys
// and of the keys it claims: one round trip when its claims are among
// keys; otherwise the claims maps are listed and the holders of the other
// keys looked up.
func (s *nftSession) readOwner(id string, keys []portKey) (pmOwnerState, error) {
	st := pmOwnerState{mine: map[portKey]*pmClaim{}, held: map[portKey]*pmHeld{}}
	var q pmQuery
	q.add(pmOwnersMap, idKey(id))
	for _, k := range keys {
		q.add(kindOf(k).claimsMap(), claimKey(id, k))
		q.add(kindOf(k).String(), k.nftKey())
	}
	res, err := s.run(&q)
	if err != nil {
		return st, err
	}
	if e := res[0]; e != nil {
		st.exists, st.comment = true, e.comment
		if len(e.data) == 4 {
			st.count = int(binaryutil.BigEndian.Uint32(e.data))
		}
	}
	for i, k := range keys {
		if c := claimOf(k, res[1+2*i]); c != nil {
			st.mine[k] = c
		}
		st.held[k] = heldOf(res[2+2*i])
	}
	if !st.exists || st.count == len(st.mine) {
		return st, nil
	}
	// Claims outside keys: list them.
	all, err := s.listClaims(map[string]bool{id: true})
	if err != nil {
		return st, err
	}
	var more []portKey
	for _, c := range all[id] {
		if _, ok := st.mine[c.key]; !ok {
			st.mine[c.key] = c
			more = append(more, c.key)
		}
	}
	return st, s.readHolders(more, st.held)
}

// readHolders looks up the holder of each key into held.
func (s *nftSession) readHolders(keys []portKey, held map[portKey]*pmHeld) error {
	var q pmQuery
	for _, k := range keys {
		q.add(kindOf(k).String(), k.nftKey())
	}
	res, err := s.run(&q)
	if err != nil {
		return err
	}
	for i, k := range keys {
		held[k] = heldOf(res[i])
	}
	return nil
}

// listClaims dumps the claims maps and returns the claims of the owners in
// ids.
func (s *nftSession) listClaims(ids map[string]bool) (map[string][]*pmClaim, error) {
	out := map[string][]*pmClaim{}
	for _, k := range pmKinds {
		elems, err := s.rd.elements(pmTable, k.claimsMap())
		if err != nil {
			return nil, fmt.Errorf("list map %s: %w", k.claimsMap(), err)
		}
		for _, e := range elems {
			if len(e.key) < len(idKey("")) {
				continue
			}
			id := decodeID(e.key[:len(idKey(""))])
			if !ids[id] {
				continue
			}
			key, ok := pmDecodeKey(k, e.key[len(idKey("")):])
			if !ok {
				continue
			}
			if c := claimOf(key, &e); c != nil {
				out[id] = append(out[id], c)
			}
		}
	}
	return out, nil
}

// pmClaimRef names one owner's claim of a key.
type pmClaimRef struct {
	id  string
	key portKey
}

// readClaims looks up claims of other owners.
func (s *nftSession) readClaims(refs []pmClaimRef) (map[pmClaimRef]*pmClaim, error) {
	var q pmQuery
	for _, r := range refs {
		q.add(kindOf(r.key).claimsMap(), claimKey(r.id, r.key))
	}
	res, err := s.run(&q)
	if err != nil {
		return nil, err
	}
	out := map[pmClaimRef]*pmClaim{}
	for i, r := range refs {
		if c := claimOf(r.key, res[i]); c != nil {
			out[r] = c
		}
	}
	return out, nil
}

// successorRefs are the earlier claimants to ask about for each claim in
// going that its owner holds.
func successorRefs(releases []pmRelease, going map[string]bool) []pmClaimRef {
	var refs []pmClaimRef
	for _, r := range releases {
		if r.held == nil || r.held.holder != r.id {
			continue
		}
		for _, c := range r.claim.prev {
			if c != r.id && !going[c] {
				refs = append(refs, pmClaimRef{id: c, key: r.claim.key})
			}
		}
	}
	return refs
}

// pmRelease is one claim let go: by owner id, of the key held by held.
type pmRelease struct {
	id    string
	claim *pmClaim
	held  *pmHeld
}

// pmTx is one transaction's element changes: deletions of elements known
// to exist, then additions; masquerade marks of a key that loses them are
// added and deleted (the pair never fails, whether or not the mark is
// there), marks it keeps or gains are added.
type pmTx struct {
	del, add map[string][]nftables.SetElement // by set
	oldMarks map[string]map[string]bool       // set -> key
	newMarks map[string]map[string]bool
}

func newTx() *pmTx {
	return &pmTx{del: map[string][]nftables.SetElement{}, add: map[string][]nftables.SetElement{},
		oldMarks: map[string]map[string]bool{}, newMarks: map[string]map[string]bool{}}
}

func (tx *pmTx) delElem(set string, key []byte) {
	tx.del[set] = append(tx.del[set], nftables.SetElement{Key: key})
}

func (tx *pmTx) addElem(set string, key, val []byte, comment string) {
	tx.add[set] = append(tx.add[set], nftables.SetElement{Key: key, Val: val, Comment: comment})
}

func (tx *pmTx) marks(into map[string]map[string]bool, c *pmClaim) {
	for set, key := range c.marks() {
		if into[set] == nil {
			into[set] = map[string]bool{}
		}
		into[set][string(key)] = true
	}
}

// publish points c's key at c, held by id, with its marks.
func (tx *pmTx) publish(id string, c *pmClaim) {
	tx.addElem(kindOf(c.key).String(), c.key.nftKey(), c.target(), id)
	tx.marks(tx.newMarks, c)
}

// unpublish deletes the key's element of holder claim c, and its marks.
func (tx *pmTx) unpublish(c *pmClaim) {
	tx.delElem(kindOf(c.key).String(), c.key.nftKey())
	tx.marks(tx.oldMarks, c)
}

// release lets r's claim go: if its owner holds the key, the key goes to
// the first earlier claimant that still claims it and is not going (found
// in succ), or is deleted. The claim itself is deleted.
func (tx *pmTx) release(r pmRelease, succ map[pmClaimRef]*pmClaim, going map[string]bool) {
	k := kindOf(r.claim.key)
	tx.delElem(k.claimsMap(), claimKey(r.id, r.claim.key))
	if r.held == nil || r.held.holder != r.id {
		return
	}
	tx.unpublish(r.claim)
	for _, c := range r.claim.prev {
		if c == r.id || going[c] {
			continue
		}
		if sc := succ[pmClaimRef{id: c, key: r.claim.key}]; sc != nil {
			tx.publish(c, sc)
			return
		}
	}
}

func (tx *pmTx) empty() bool {
	return len(tx.del) == 0 && len(tx.add) == 0 && len(tx.oldMarks) == 0 && len(tx.newMarks) == 0
}

// queue queues the changes on s.
func (tx *pmTx) queue(s *nftSession) error {
	ref := func(name string) *nftables.Set { return &nftables.Set{Table: s.table, Name: name} }
	for _, set := range sortedKeys(tx.del) {
		if err := inChunks(ref(set), tx.del[set], s.conn.SetDeleteElements); err != nil {
			return fmt.Errorf("delete elements of %s: %w", set, err)
		}
	}
	for _, set := range sortedKeys(tx.oldMarks) {
		var gone []nftables.SetElement
		for _, key := range sortedKeys(tx.oldMarks[set]) {
			if !tx.newMarks[set][key] {
				gone = append(gone, nftables.SetElement{Key: []byte(key)})
			}
		}
		if len(gone) == 0 {
			continue
		}
		if err := inChunks(ref(set), gone, s.conn.SetAddElements); err != nil {
			return fmt.Errorf("change set %s: %w", set, err)
		}
		if err := inChunks(ref(set), gone, s.conn.SetDeleteElements); err != nil {
			return fmt.Errorf("change set %s: %w", set, err)
		}
	}
	for _, set := range sortedKeys(tx.add) {
		if err := inChunks(ref(set), tx.add[set], s.conn.SetAddElements); err != nil {
			return fmt.Errorf("add elements to %s: %w", set, err)
		}
	}
	for _, set := range sortedKeys(tx.newMarks) {
		var elems []nftables.SetElement
		for _, key := range sortedKeys(tx.newMarks[set]) {
			elems = append(elems, nftables.SetElement{Key: []byte(key)})
		}
		if err := inChunks(ref(set), elems, s.conn.SetAddElements); err != nil {
			return fmt.Errorf("add elements to %s: %w", set, err)
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

// AddPorts claims the owner's keys, takes over those others hold, lets go
// of keys an earlier ADD claimed and this one does not, and records the
// owner. Round trips: the base's chains and sets (a dump each), one batch
// of lookups (the owner, its claims, the holders), one more when another
// owner holds a key or a dropped key has earlier claimants, one
// transaction of element changes (plus, the first time, the base or a new
// masquerade class).
func (m *NFTPorts) AddPorts(ctx context.Context, rule PortRule) error {
	p, err := parsePortRule(rule)
	if err != nil {
		return err
	}
	if err := nftOnly(p); err != nil {
		return err
	}
	id, label := pmOwnerID(rule.Owner), rule.Owner.label()
	fail := func(err error) error { return fmt.Errorf("publish ports of %s: %w", label, err) }
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

	want := pmWanted(p)
	keys := make([]portKey, len(want))
	var classes []pmClass
	for i, w := range want {
		keys[i] = w.key
		classes = append(classes, w.classes()...)
	}
	base, err := s.readBase()
	if err != nil {
		return fail(err)
	}
	if len(want) > 0 {
		if err := s.queueBase(base, classes); err != nil {
			return fail(err)
		}
	} else if !base.tableExists {
		return nil // nothing published, nothing to let go
	}
	st, err := s.readOwner(id, keys)
	if err != nil {
		return fail(err)
	}

	// Whom the taken-over keys were taken from, and who gets dropped keys.
	var refs []pmClaimRef
	for _, w := range want {
		if h := st.held[w.key]; h != nil && h.holder != id && h.holder != "" {
			refs = append(refs, pmClaimRef{id: h.holder, key: w.key})
		}
	}
	var drops []pmRelease
	for _, k := range sortedClaimKeys(st.mine) {
		if !p.has(k) {
			drops = append(drops, pmRelease{id: id, claim: st.mine[k], held: st.held[k]})
		}
	}
	others, err := s.readClaims(append(refs, successorRefs(drops, nil)...))
	if err != nil {
		return fail(err)
	}

	tx := newTx()
	for i := range want {
		w := &want[i]
		old, h := st.mine[w.key], st.held[w.key]
		var prev []string
		if old != nil {
			prev = old.prev // kept from an earlier ADD
		}
		if h != nil && h.holder != id && h.holder != "" {
			prev = []string{h.holder}
			if hc := others[pmClaimRef{id: h.holder, key: w.key}]; hc != nil {
				prev = append(prev, hc.prev...)
			}
		}
		w.prev = prevList(id, prev)
		k := kindOf(w.key)
		if old == nil || !sameClaim(*old, *w) || old.comment() != w.comment() {
			if old != nil {
				tx.delElem(k.claimsMap(), claimKey(id, w.key))
			}
			tx.addElem(k.claimsMap(), claimKey(id, w.key), w.target(), w.comment())
		}
		switch {
		case h == nil:
			tx.publish(id, w)
		case h.holder == id:
			if old != nil {
				tx.marks(tx.oldMarks, old)
			}
			if !bytes.Equal(h.data, w.target()) {
				tx.delElem(k.String(), w.key.nftKey())
				tx.addElem(k.String(), w.key.nftKey(), w.target(), id)
			}
			tx.marks(tx.newMarks, w)
		default:
			tx.delElem(k.String(), w.key.nftKey())
			if hc := others[pmClaimRef{id: h.holder, key: w.key}]; hc != nil {
				tx.marks(tx.oldMarks, hc)
			}
			tx.publish(id, w)
		}
	}
	for _, r := range drops {
		tx.release(r, others, nil)
	}
	switch {
	case len(want) == 0 && !st.exists:
		return nil // nothing published, nothing to let go
	case len(want) == 0:
		tx.delElem(pmOwnersMap, idKey(id))
	case len(want) > 0 && (!st.exists || st.count != len(want)):
		if st.exists {
			tx.delElem(pmOwnersMap, idKey(id))
		}
		tx.addElem(pmOwnersMap, idKey(id), countData(len(want)), ownerComment(rule.Owner, nftCommentMax))
	}
	if err := tx.queue(s); err != nil {
		return fail(err)
	}
	if err := s.conn.Flush(); err != nil {
		return fail(fmt.Errorf("owner %s: %w", id, noNFTables(err)))
	}
	return nil
}

func sortedClaimKeys(m map[portKey]*pmClaim) []portKey {
	keys := make([]portKey, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool { return portMapLess(portMap{key: keys[i]}, portMap{key: keys[j]}) })
	return keys
}

// KnownPortsDeleter is a PortMapper that deletes an owner faster when told
// what it published: it looks those keys up rather than searching.
type KnownPortsDeleter interface {
	// DelKnownPorts is DelPorts, told that the owner probably published
	// known (what its ADD was asked for); what else it published is
	// still found and removed.
	DelKnownPorts(ctx context.Context, owner Owner, known []PortMapping) ([]PortMapping, error)
}

// DelPortsKnown deletes owner from m, with known as a hint when m takes one.
func DelPortsKnown(ctx context.Context, m PortMapper, owner Owner, known []PortMapping) ([]PortMapping, error) {
	if k, ok := m.(KnownPortsDeleter); ok && len(known) > 0 {
		return k.DelKnownPorts(ctx, owner, known)
	}
	return m.DelPorts(ctx, owner)
}

// DelPorts removes everything of the owner, found by the owner alone: it
// looks the owner up and lists the claims maps.
func (m *NFTPorts) DelPorts(ctx context.Context, owner Owner) ([]PortMapping, error) {
	return m.del(ctx, owner, nil)
}

// DelKnownPorts removes everything of the owner. Round trips: one batch of
// lookups (the owner, its claims and the holders of known's keys); when
// the owner claims other keys, a listing of the claims maps; when it holds
// a key others claimed before, a lookup of theirs; one transaction.
func (m *NFTPorts) DelKnownPorts(ctx context.Context, owner Owner, known []PortMapping) ([]PortMapping, error) {
	return m.del(ctx, owner, known)
}

func (m *NFTPorts) del(ctx context.Context, owner Owner, known []PortMapping) ([]PortMapping, error) {
	if err := reclassify(validateOwner(owner)); err != nil {
		return nil, err
	}
	id, label := pmOwnerID(owner), owner.label()
	fail := func(err error) error { return fmt.Errorf("remove published ports of %s: %w", label, err) }
	var keys []portKey
	seen := map[portKey]bool{}
	for _, mp := range known {
		if pm, err := parseMapping(mp); err == nil && !seen[pm.key] {
			seen[pm.key] = true
			keys = append(keys, pm.key)
		}
	}
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
	st, err := s.readOwner(id, keys)
	if err != nil || !st.exists {
		return nil, fail0(fail, err) // claims are only made with their owner, in one transaction
	}
	var rs []pmRelease
	var claims []pmClaim
	for _, k := range sortedClaimKeys(st.mine) {
		rs = append(rs, pmRelease{id: id, claim: st.mine[k], held: st.held[k]})
		claims = append(claims, *st.mine[k])
	}
	succ, err := s.readClaims(successorRefs(rs, nil))
	if err != nil {
		return nil, fail(err)
	}
	tx := newTx()
	for _, r := range rs {
		tx.release(r, succ, nil)
	}
	tx.delElem(pmOwnersMap, idKey(id))
	if err := tx.queue(s); err != nil {
		return nil, fail(err)
	}
	if err := s.conn.Flush(); err != nil {
		return nil, fail(fmt.Errorf("owner %s: %w", id, noNFTables(err)))
	}
	return claimMappings(claims), nil
}

// fail0 wraps err with fail, and leaves nil alone.
func fail0(fail func(error) error, err error) error {
	if err == nil {
		return nil
	}
	return fail(err)
}

// pmOwnerInfo is an element of the owners map.
type pmOwnerInfo struct {
	id      string
	network string
	label   string // network/id/if as the comment has them
}

// listOwners dumps the owners map.
func (s *nftSession) listOwners() ([]pmOwnerInfo, error) {
	return listPMOwners(s.rd)
}

func listPMOwners(rd *nftReader) ([]pmOwnerInfo, error) {
	elems, err := rd.elements(pmTable, pmOwnersMap)
	if err != nil {
		return nil, fmt.Errorf("list map %s: %w", pmOwnersMap, err)
	}
	var out []pmOwnerInfo
	for _, e := range elems {
		o := pmOwnerInfo{id: decodeID(e.key)}
		if f := strings.Fields(e.comment); len(f) >= 3 && f[0] == "plumb" {
			o.network, o.label = f[2], strings.Join(f[2:], "/")
		}
		out = append(out, o)
	}
	return out, nil
}

// GCPorts removes every owner of network not in keep, with its claims, and
// lets go of the keys they hold: a dump of the owners map, and when an
// owner goes, of the claims maps, lookups of the holders of its keys and
// of earlier claimants, and one transaction.
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
	owners, err := s.listOwners()
	if err != nil {
		return fail(err)
	}
	kept := map[string]bool{}
	for _, o := range inNetwork(network, keep) {
		kept[pmOwnerID(o)] = true
	}
	going := map[string]bool{}
	for _, o := range owners {
		if o.network == network && !kept[o.id] {
			going[o.id] = true
		}
	}
	if len(going) == 0 {
		return nil
	}
	claims, err := s.listClaims(going)
	if err != nil {
		return fail(err)
	}
	held := map[portKey]*pmHeld{}
	var keys []portKey
	for _, id := range sortedKeys(claims) {
		for _, c := range claims[id] {
			if _, ok := held[c.key]; !ok {
				held[c.key] = nil
				keys = append(keys, c.key)
			}
		}
	}
	if err := s.readHolders(keys, held); err != nil {
		return fail(err)
	}
	var rs []pmRelease
	for _, id := range sortedKeys(claims) {
		for _, c := range claims[id] {
			rs = append(rs, pmRelease{id: id, claim: c, held: held[c.key]})
		}
	}
	succ, err := s.readClaims(successorRefs(rs, going))
	if err != nil {
		return fail(err)
	}
	tx := newTx()
	for _, r := range rs {
		tx.release(r, succ, going)
	}
	for _, id := range sortedKeys(going) {
		tx.delElem(pmOwnersMap, idKey(id))
	}
	if err := tx.queue(s); err != nil {
		return fail(err)
	}
	if err := s.conn.Flush(); err != nil {
		return fail(fmt.Errorf("delete owners %s: %w", strings.Join(sortedKeys(going), ", "), noNFTables(err)))
	}
	return nil
}

// CheckPorts compares the base, the owner's element and claims, the holder
// of each key and its masquerade marks with the design.
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
	label := rule.Owner.label()
	s, err := openPM()
	if err != nil {
		return fmt.Errorf("check published ports of %s: %w", label, err)
	}
	defer s.close()
	d, err := s.checkPorts(p, pmOwnerID(rule.Owner))
	if err != nil {
		return fmt.Errorf("check published ports of %s: %w", label, err)
	}
	if d != "" {
		return fmt.Errorf("check published ports of %s: %w: %s", label, ErrPortsMismatch, d)
	}
	return nil
}

func (s *nftSession) checkPorts(p portPlan, id string) (string, error) {
	want := pmWanted(p)
	keys := make([]portKey, len(want))
	var classes []pmClass
	for i, w := range want {
		keys[i] = w.key
		classes = append(classes, w.classes()...)
	}
	if len(want) > 0 {
		base, err := s.readBase()
		if err != nil {
			return "", err
		}
		if d := base.diffFor(classes); d != "" {
			return d, nil
		}
	}
	st, err := s.readOwner(id, keys)
	if err != nil {
		return "", err
	}
	switch {
	case len(want) == 0 && st.exists:
		return fmt.Sprintf("owner %s is in map %s, but nothing is published", id, pmOwnersMap), nil
	case len(want) == 0:
		return "", nil
	case !st.exists:
		return fmt.Sprintf("owner %s is missing from map %s", id, pmOwnersMap), nil
	}
	for _, w := range want {
		c := st.mine[w.key]
		if c == nil {
			return fmt.Sprintf("the claim of %s is missing from map %s", w.key, kindOf(w.key).claimsMap()), nil
		}
		if !sameClaim(*c, w) {
			return fmt.Sprintf("%s is claimed as %s, want %s", w.key, claimText(*c), claimText(w)), nil
		}
	}
	if len(st.mine) != len(want) || st.count != len(want) {
		for _, k := range sortedClaimKeys(st.mine) {
			if !p.has(k) {
				return fmt.Sprintf("unexpected claim of %s", k), nil
			}
		}
		return fmt.Sprintf("the owner counts %d claims, want %d", st.count, len(want)), nil
	}
	var q pmQuery
	for _, w := range want {
		h := st.held[w.key]
		switch {
		case h == nil:
			return fmt.Sprintf("%s is not published (no element in map %s)", w.key, kindOf(w.key)), nil
		case h.holder != id:
			return fmt.Sprintf("%s is published by %s", w.key, s.ownerLabel(h.holder)), nil
		case !bytes.Equal(h.data, w.target()):
			ip, port, _ := pmDecodeTarget(w.key.fam, h.data)
			return fmt.Sprintf("%s goes to %s, want %s", w.key, net.JoinHostPort(ip.String(), fmt.Sprint(port)),
				net.JoinHostPort(w.ctrIP.String(), fmt.Sprint(w.port))), nil
		}
		for _, set := range sortedKeys(w.marks()) {
			q.add(set, w.marks()[set])
		}
	}
	res, err := s.run(&q)
	if err != nil {
		return "", err
	}
	for i, e := range res {
		if e == nil {
			return fmt.Sprintf("a masquerade mark is missing from set %s", q.qs[i].set), nil
		}
	}
	return "", nil
}

// claimText is "10.88.0.2:80 mark 13 10.88.0.0/24".
func claimText(c pmClaim) string {
	return strings.TrimSpace(net.JoinHostPort(c.ctrIP.String(), fmt.Sprint(c.port)) + " " + c.markText())
}

// ownerLabel names owner id by its element's comment.
func (s *nftSession) ownerLabel(id string) string {
	e, ok, err := s.rd.element(pmTable, pmOwnersMap, idKey(id))
	if err == nil && ok {
		if f := strings.Fields(e.comment); len(f) >= 3 && f[0] == "plumb" {
			return strings.Join(f[2:], "/") + " (owner " + id + ")"
		}
	}
	return "owner " + id
}
