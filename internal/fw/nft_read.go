package fw

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"syscall"

	"github.com/google/nftables/userdata"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/plumbnet/plumb/internal/reaper"
)

// nftReader asks nf_tables single questions over its own netlink socket:
// one element of a map by key, whether one chain exists, the elements of
// one map. github.com/google/nftables has no single-element lookup and
// formats away the errno of its reads (so "absent" cannot be told from
// "failed"); these few requests keep the hot path O(1) and the errors exact.
type nftReader struct {
	c *netlink.Conn
}

func dialNFTReader() (*nftReader, error) {
	c, err := netlink.Dial(unix.NETLINK_NETFILTER, nil)
	if err != nil {
		return nil, noNFTables(fmt.Errorf("open nf_tables netlink socket: %w", err))
	}
	return &nftReader{c: c}, nil
}

func (r *nftReader) Close() error {
	if reaper.Holding() {
		return nil
	}
	return r.c.Close()
}

// vmapElem is one element of a verdict map: its key and the chain it jumps
// or goes to ("" for other verdicts). For an element of a data map, data is
// its value; comment is the element's comment, if any.
type vmapElem struct {
	key     []byte
	chain   string
	data    []byte
	comment string
}

// request sends one nf_tables message for the inet family and returns the
// replies; a kernel error comes back as a *netlink.OpError wrapping its errno.
func (r *nftReader) request(msgType uint16, dump bool, attrs []netlink.Attribute) ([]netlink.Message, error) {
	return r.requestFamily(unix.NFPROTO_INET, msgType, dump, attrs)
}

// requestFamily is request for any nf_tables family (bridge, inet, ...).
func (r *nftReader) requestFamily(family byte, msgType uint16, dump bool, attrs []netlink.Attribute) ([]netlink.Message, error) {
	msg, err := nftMessage(family, msgType, dump, attrs)
	if err != nil {
		return nil, err
	}
	return r.c.Execute(msg)
}

// nftMessage builds one nf_tables request.
func nftMessage(family byte, msgType uint16, dump bool, attrs []netlink.Attribute) (netlink.Message, error) {
	data, err := netlink.MarshalAttributes(attrs)
	if err != nil {
		return netlink.Message{}, err
	}
	flags := netlink.Request
	if dump {
		flags |= netlink.Dump
	}
	return netlink.Message{
		Header: netlink.Header{Type: netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | msgType), Flags: flags},
		// struct nfgenmsg: family, version, resource id (big endian).
		Data: append([]byte{family, unix.NFNETLINK_V0, 0, 0}, data...),
	}, nil
}

// tableExists reports whether table exists in the inet family.
func (r *nftReader) tableExists(table string) (bool, error) {
	_, err := r.request(unix.NFT_MSG_GETTABLE, false, []netlink.Attribute{
		{Type: unix.NFTA_TABLE_NAME, Data: cstr(table)},
	})
	return found(err)
}

// chainExistsIn reports whether chain exists in table of a family.
func (r *nftReader) chainExistsIn(family byte, table, chain string) (bool, error) {
	_, err := r.requestFamily(family, unix.NFT_MSG_GETCHAIN, false, []netlink.Attribute{
		{Type: unix.NFTA_CHAIN_TABLE, Data: cstr(table)},
		{Type: unix.NFTA_CHAIN_NAME, Data: cstr(chain)},
	})
	return found(err)
}

// chainExists reports whether chain exists in table.
func (r *nftReader) chainExists(table, chain string) (bool, error) {
	return r.chainExistsIn(unix.NFPROTO_INET, table, chain)
}

// element looks up key in the verdict map set; ok is false when the table,
// the map or the element is absent.
func (r *nftReader) element(table, set string, key []byte) (e vmapElem, ok bool, err error) {
	attrs, err := getElemAttrs(table, set, key)
	if err != nil {
		return vmapElem{}, false, err
	}
	msgs, err := r.request(unix.NFT_MSG_GETSETELEM, false, attrs)
	if ok, err := found(err); !ok || err != nil {
		return vmapElem{}, false, err
	}
	elems, err := decodeElems(msgs)
	if err != nil {
		return vmapElem{}, false, err
	}
	if len(elems) != 1 {
		return vmapElem{}, false, fmt.Errorf("get element of %s: got %d elements, want 1", set, len(elems))
	}
	return elems[0], true, nil
}

// getElemAttrs asks for the element of set with key.
func getElemAttrs(table, set string, key []byte) ([]netlink.Attribute, error) {
	keyAttr, err := netlink.MarshalAttributes([]netlink.Attribute{{Type: unix.NFTA_DATA_VALUE, Data: key}})
	if err != nil {
		return nil, err
	}
	elem, err := netlink.MarshalAttributes([]netlink.Attribute{
		{Type: unix.NLA_F_NESTED | unix.NFTA_SET_ELEM_KEY, Data: keyAttr},
	})
	if err != nil {
		return nil, err
	}
	list, err := netlink.MarshalAttributes([]netlink.Attribute{{Type: unix.NLA_F_NESTED | unix.NFTA_LIST_ELEM, Data: elem}})
	if err != nil {
		return nil, err
	}
	return []netlink.Attribute{
		{Type: unix.NFTA_SET_ELEM_LIST_TABLE, Data: cstr(table)},
		{Type: unix.NFTA_SET_ELEM_LIST_SET, Data: cstr(set)},
		{Type: unix.NLA_F_NESTED | unix.NFTA_SET_ELEM_LIST_ELEMENTS, Data: list},
	}, nil
}

// elements dumps the verdict map set; an absent table or map has none.
func (r *nftReader) elements(table, set string) ([]vmapElem, error) {
	return r.elementsIn(unix.NFPROTO_INET, table, set)
}

// elementsIn is elements for a table of any family.
func (r *nftReader) elementsIn(family byte, table, set string) ([]vmapElem, error) {
	msgs, err := r.requestFamily(family, unix.NFT_MSG_GETSETELEM, true, []netlink.Attribute{
		{Type: unix.NFTA_SET_ELEM_LIST_TABLE, Data: cstr(table)},
		{Type: unix.NFTA_SET_ELEM_LIST_SET, Data: cstr(set)},
	})
	if ok, err := found(err); !ok || err != nil {
		return nil, err
	}
	return decodeElems(msgs)
}

// found turns ENOENT into (false, nil).
func found(err error) (bool, error) {
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, unix.ENOENT):
		return false, nil
	}
	return false, noNFTables(err)
}

// decodeElems reads NFT_MSG_NEWSETELEM messages:
// LIST_ELEMENTS { LIST_ELEM { ELEM_KEY { DATA_VALUE }, ELEM_DATA { DATA_VERDICT { CODE, CHAIN } } } }.
func decodeElems(msgs []netlink.Message) ([]vmapElem, error) {
	var out []vmapElem
	for _, m := range msgs {
		if len(m.Data) < 4 {
			continue
		}
		ad, err := newDecoder(m.Data[4:])
		if err != nil {
			return nil, err
		}
		for ad.Next() {
			if ad.Type() != unix.NFTA_SET_ELEM_LIST_ELEMENTS {
				continue
			}
			ad.Nested(func(list *netlink.AttributeDecoder) error {
				for list.Next() {
					if list.Type() != unix.NFTA_LIST_ELEM {
						continue
					}
					var e vmapElem
					list.Nested(func(el *netlink.AttributeDecoder) error {
						for el.Next() {
							switch el.Type() {
							case unix.NFTA_SET_ELEM_KEY:
								el.Nested(func(d *netlink.AttributeDecoder) error {
									for d.Next() {
										if d.Type() == unix.NFTA_DATA_VALUE {
											e.key = d.Bytes()
										}
									}
									return nil
								})
							case unix.NFTA_SET_ELEM_DATA:
								el.Nested(func(d *netlink.AttributeDecoder) error {
									for d.Next() {
										if d.Type() == unix.NFTA_DATA_VALUE {
											e.data = d.Bytes()
										}
										if d.Type() == unix.NFTA_DATA_VERDICT {
											d.Nested(func(v *netlink.AttributeDecoder) error {
												for v.Next() {
													if v.Type() == unix.NFTA_VERDICT_CHAIN {
														e.chain = v.String()
													}
												}
												return nil
											})
										}
									}
									return nil
								})
							case unix.NFTA_SET_ELEM_USERDATA:
								e.comment, _ = userdata.GetString(el.Bytes(), userdata.NFTNL_UDATA_SET_ELEM_COMMENT)
							}
						}
						return nil
					})
					out = append(out, e)
				}
				return nil
			})
		}
		if err := ad.Err(); err != nil {
			return nil, fmt.Errorf("decode map elements: %w", err)
		}
	}
	return out, nil
}

func newDecoder(b []byte) (*netlink.AttributeDecoder, error) {
	ad, err := netlink.NewAttributeDecoder(b)
	if err != nil {
		return nil, err
	}
	ad.ByteOrder = binary.BigEndian
	return ad, nil
}

func cstr(s string) []byte { return append([]byte(s), 0) }

// noNFTables marks errors that mean the kernel has no nf_tables: the
// netfilter netlink family or its nf_tables subsystem is missing.
func noNFTables(err error) error {
	if err == nil || errors.Is(err, ErrNoNFTables) {
		return err
	}
	for _, e := range []error{unix.EPROTONOSUPPORT, unix.EAFNOSUPPORT, unix.EOPNOTSUPP} {
		if errors.Is(err, e) {
			return fmt.Errorf("%w: %w", ErrNoNFTables, err)
		}
	}
	return err
}

// sources returns the source addresses the rules of chain match on (the
// value compared right after a load of the IPv4 or IPv6 source address);
// an absent chain has none. AddMasq reads its owner chain with it to find
// the addresses an earlier ADD pointed at the owner.
func (r *nftReader) sources(table, chain string) ([][]byte, error) {
	msgs, err := r.request(unix.NFT_MSG_GETRULE, true, []netlink.Attribute{
		{Type: unix.NFTA_RULE_TABLE, Data: cstr(table)},
		{Type: unix.NFTA_RULE_CHAIN, Data: cstr(chain)},
	})
	if ok, err := found(err); !ok || err != nil {
		return nil, err
	}
	var out [][]byte
	for _, m := range msgs {
		if len(m.Data) < 4 {
			continue
		}
		ad, err := newDecoder(m.Data[4:])
		if err != nil {
			return nil, err
		}
		for ad.Next() {
			if ad.Type() != unix.NFTA_RULE_EXPRESSIONS {
				continue
			}
			ad.Nested(func(list *netlink.AttributeDecoder) error {
				afterSaddr := false
				for list.Next() {
					if list.Type() != unix.NFTA_LIST_ELEM {
						continue
					}
					list.Nested(func(e *netlink.AttributeDecoder) error {
						var name string
						var data []byte
						for e.Next() {
							switch e.Type() {
							case unix.NFTA_EXPR_NAME:
								name = e.String()
							case unix.NFTA_EXPR_DATA:
								data = e.Bytes()
							}
						}
						switch name {
						case "payload":
							afterSaddr = isSaddrLoad(data)
						case "cmp":
							if afterSaddr {
								if v := cmpValue(data); v != nil {
									out = append(out, v)
								}
							}
							afterSaddr = false
						default:
							afterSaddr = false
						}
						return nil
					})
				}
				return nil
			})
		}
		if err := ad.Err(); err != nil {
			return nil, fmt.Errorf("decode rules of %s: %w", chain, err)
		}
	}
	return out, nil
}

// isSaddrLoad reports whether payload expression data loads the IPv4 or
// IPv6 source address.
func isSaddrLoad(data []byte) bool {
	ad, err := newDecoder(data)
	if err != nil {
		return false
	}
	var base, off, n uint32
	for ad.Next() {
		switch ad.Type() {
		case unix.NFTA_PAYLOAD_BASE:
			base = ad.Uint32()
		case unix.NFTA_PAYLOAD_OFFSET:
			off = ad.Uint32()
		case unix.NFTA_PAYLOAD_LEN:
			n = ad.Uint32()
		}
	}
	return base == unix.NFT_PAYLOAD_NETWORK_HEADER &&
		(off == ipv4SaddrOffset && n == 4 || off == ipv6SaddrOffset && n == 16)
}

// cmpValue is the value a cmp expression compares with.
func cmpValue(data []byte) []byte {
	ad, err := newDecoder(data)
	if err != nil {
		return nil
	}
	var v []byte
	for ad.Next() {
		if ad.Type() == unix.NFTA_CMP_DATA {
			ad.Nested(func(d *netlink.AttributeDecoder) error {
				for d.Next() {
					if d.Type() == unix.NFTA_DATA_VALUE {
						v = d.Bytes()
					}
				}
				return nil
			})
		}
	}
	return v
}

// ruleJump is one rule of a chain: its handle and the chain its immediate
// verdict jumps to ("" when it does not jump).
type ruleJump struct {
	handle uint64
	target string
}

// jumps lists the rules of chain with their jump targets, decoding nothing
// else: a dispatch chain of iptables-nft holds a rule per container, whose
// matches (compat extensions) need not be parsed to find the rule that
// jumps to a given chain. An absent chain has none.
func (r *nftReader) jumps(family byte, table, chain string) ([]ruleJump, error) {
	return dumpRules(family, table, chain, decodeJump)
}

// dumpRules dumps the rules of chain and decodes each with decode (given
// the rule's attributes); an absent chain has none.
func dumpRules[T any](family byte, table, chain string, decode func([]byte) (T, error)) ([]T, error) {
	var out []T
	err := dumpLarge(family, unix.NFT_MSG_GETRULE, []netlink.Attribute{
		{Type: unix.NFTA_RULE_TABLE, Data: cstr(table)},
		{Type: unix.NFTA_RULE_CHAIN, Data: cstr(chain)},
	}, func(m []byte) error {
		if len(m) < 4 {
			return nil
		}
		r, err := decode(m[4:])
		if err != nil {
			return fmt.Errorf("decode rules of %s: %w", chain, err)
		}
		out = append(out, r)
		return nil
	})
	if ok, err := found(err); !ok || err != nil {
		return nil, err
	}
	return out, nil
}

// attrs walks netlink attributes, calling fn with each one's type (flags
// cleared) and payload; it stops at the first error fn returns.
func attrs(b []byte, fn func(typ uint16, data []byte) error) error {
	for len(b) >= unix.SizeofNlAttr {
		l := int(binary.NativeEndian.Uint16(b[0:2]))
		if l < unix.SizeofNlAttr || l > len(b) {
			return errors.New("malformed netlink attribute")
		}
		if err := fn(binary.NativeEndian.Uint16(b[2:4])&nlaTypeMask, b[unix.SizeofNlAttr:l]); err != nil {
			return err
		}
		l = (l + unix.NLA_ALIGNTO - 1) &^ (unix.NLA_ALIGNTO - 1)
		if l > len(b) {
			break
		}
		b = b[l:]
	}
	return nil
}

// decodeJump reads a rule's handle and the chain its immediate verdict
// jumps to, walking the attributes in place and keeping nothing else:
// decoding a rule per container with nested decoders cost more than the
// kernel's dump itself.
func decodeJump(b []byte) (ruleJump, error) {
	var j ruleJump
	err := attrs(b, func(typ uint16, data []byte) error {
		switch typ {
		case unix.NFTA_RULE_HANDLE:
			if len(data) == 8 {
				j.handle = binary.BigEndian.Uint64(data)
			}
		case unix.NFTA_RULE_EXPRESSIONS:
			return eachExpr(data, func(name, edata []byte) {
				if string(name) == "immediate" {
					if code, chain, ok := verdictOf(edata); ok && code == unix.NFT_JUMP {
						j.target = string(chain)
					}
				}
			})
		}
		return nil
	})
	return j, err
}

// eachExpr calls fn with the name and data of each expression of a rule's
// NFTA_RULE_EXPRESSIONS list.
func eachExpr(list []byte, fn func(name, data []byte)) error {
	return attrs(list, func(_ uint16, elem []byte) error {
		var name, data []byte
		if err := attrs(elem, func(typ uint16, d []byte) error {
			switch typ {
			case unix.NFTA_EXPR_NAME:
				name = bytes.TrimRight(d, "\x00")
			case unix.NFTA_EXPR_DATA:
				data = d
			}
			return nil
		}); err != nil {
			return err
		}
		fn(name, data)
		return nil
	})
}

// verdictOf reads an immediate expression's verdict: its code and, for a
// jump or goto, the chain; ok is false when it loads a register instead.
func verdictOf(data []byte) (code int32, chain []byte, ok bool) {
	attrs(data, func(typ uint16, d []byte) error {
		if typ != unix.NFTA_IMMEDIATE_DATA {
			return nil
		}
		return attrs(d, func(typ uint16, v []byte) error {
			if typ != unix.NFTA_DATA_VERDICT {
				return nil
			}
			ok = true
			return attrs(v, func(typ uint16, x []byte) error {
				switch {
				case typ == unix.NFTA_VERDICT_CODE && len(x) == 4:
					code = int32(binary.BigEndian.Uint32(x))
				case typ == unix.NFTA_VERDICT_CHAIN:
					chain = bytes.TrimRight(x, "\x00")
				}
				return nil
			})
		})
	})
	return code, chain, ok
}

// dumpBufSize is the read buffer of dumpLarge. The kernel sizes each batch
// of a netlink dump by the largest buffer the reader has passed to recvmsg
// (up to 32 KiB), and the nf_tables rule dump walks the chain again from
// its first rule for every batch: with mdlayher/netlink's page-sized reads
// a dump of a 1,000-rule chain took 8 ms, nearly all of it that walk.
const dumpBufSize = 32 << 10

// dumpLarge runs one nf_tables dump on a socket of its own, read with a
// dumpBufSize buffer, and calls fn with each reply's payload (nfgenmsg and
// attributes, as netlink.Message.Data holds it), valid only during the
// call: fn copies what it keeps.
func dumpLarge(family byte, msgType uint16, attrs []netlink.Attribute, fn func([]byte) error) error {
	req, err := nftMessage(family, msgType, true, attrs)
	if err != nil {
		return err
	}
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_NETFILTER)
	if err != nil {
		return noNFTables(fmt.Errorf("open nf_tables netlink socket: %w", err))
	}
	defer func() {
		if !reaper.Holding() { // see reaper.Holding
			unix.Close(fd)
		}
	}()
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return err
	}
	const seq = 1
	hdr := make([]byte, unix.SizeofNlMsghdr, unix.SizeofNlMsghdr+len(req.Data))
	binary.NativeEndian.PutUint32(hdr[0:4], uint32(unix.SizeofNlMsghdr+len(req.Data)))
	binary.NativeEndian.PutUint16(hdr[4:6], uint16(req.Header.Type))
	binary.NativeEndian.PutUint16(hdr[6:8], uint16(req.Header.Flags))
	binary.NativeEndian.PutUint32(hdr[8:12], seq)
	if err := unix.Sendto(fd, append(hdr, req.Data...), 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return err
	}
	buf := make([]byte, dumpBufSize)
	for {
		n, _, err := unix.Recvfrom(fd, buf, 0)
		if err != nil {
			if err == unix.EINTR {
				continue
			}
			return err
		}
		msgs, err := syscall.ParseNetlinkMessage(buf[:n])
		if err != nil {
			return err
		}
		for _, m := range msgs {
			if m.Header.Seq != seq {
				continue
			}
			switch m.Header.Type {
			case unix.NLMSG_DONE:
				return nil
			case unix.NLMSG_ERROR:
				if len(m.Data) < 4 {
					return fmt.Errorf("short netlink error")
				}
				if e := int32(binary.NativeEndian.Uint32(m.Data[:4])); e != 0 {
					return unix.Errno(-e)
				}
				return nil
			}
			if err := fn(m.Data); err != nil {
				return err
			}
		}
	}
}

// nlaTypeMask clears NLA_F_NESTED and NLA_F_NET_BYTEORDER from a type.
const nlaTypeMask = 0x3fff

// leanExpr is what the iptables-nft view reads of one rule expression:
// its name and, by kind, the comparison, the mask, the verdict or the
// xtables target's name. Everything else (compat match blobs above all) is
// skipped, not decoded.
type leanExpr struct {
	name      string
	cmpOp     uint32 // cmp: NFT_CMP_*
	data      []byte // cmp: the value; bitwise: the mask
	verdict   int32  // immediate: the verdict code, when isVerdict
	chain     string // immediate: the chain a jump or goto names
	isVerdict bool   // immediate: it sets the verdict (not a register)
	target    string // target: the xtables target's name
}

// leanRules dumps the rules of chain and decodes their expressions into
// leanExprs; an absent chain has none.
func leanRules(family byte, table, chain string) ([][]leanExpr, error) {
	return dumpRules(family, table, chain, func(b []byte) ([]leanExpr, error) {
		var rule []leanExpr
		err := attrs(b, func(typ uint16, data []byte) error {
			if typ != unix.NFTA_RULE_EXPRESSIONS {
				return nil
			}
			return eachExpr(data, func(name, data []byte) {
				rule = append(rule, decodeLeanExpr(string(name), data))
			})
		})
		return rule, err
	})
}

// decodeLeanExpr reads what leanExpr holds of an expression's data. The
// bytes are copied: the dump's buffer is reused by its next batch.
func decodeLeanExpr(name string, data []byte) leanExpr {
	e := leanExpr{name: name}
	// value is the payload of an NFTA_DATA_VALUE nested in d.
	value := func(d []byte) []byte {
		var v []byte
		attrs(d, func(typ uint16, x []byte) error {
			if typ == unix.NFTA_DATA_VALUE {
				v = bytes.Clone(x)
			}
			return nil
		})
		return v
	}
	if name == "immediate" {
		var chain []byte
		e.verdict, chain, e.isVerdict = verdictOf(data)
		e.chain = string(chain)
		return e
	}
	attrs(data, func(typ uint16, d []byte) error {
		switch {
		case name == "cmp" && typ == unix.NFTA_CMP_OP && len(d) == 4:
			e.cmpOp = binary.BigEndian.Uint32(d)
		case name == "cmp" && typ == unix.NFTA_CMP_DATA:
			e.data = value(d)
		case name == "bitwise" && typ == unix.NFTA_BITWISE_MASK:
			e.data = value(d)
		case name == "target" && typ == unix.NFTA_TARGET_NAME:
			e.target = string(bytes.TrimRight(d, "\x00"))
		}
		return nil
	})
	return e
}
