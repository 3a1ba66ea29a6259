package fw

import (
	"errors"
	"fmt"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// Questions about sets for the port mapper: the names of the table's sets,
// and many element lookups to a netlink round trip.

// elemQuery names one element: the set and the key.
type elemQuery struct {
	set string
	key []byte
}

// lookupChunk requests go out in one sendmsg: the kernel queues a reply for
// each before they are read, and the socket's receive buffer must hold them.
const lookupChunk = 64

// lookupElements looks up many elements of table with one sendmsg per
// lookupChunk of them (the kernel answers each request with its own
// message, in order: the element, or an error). nil stands for absent.
func (r *nftReader) lookupElements(table string, qs []elemQuery) ([]*vmapElem, error) {
	out := make([]*vmapElem, len(qs))
	for start := 0; start < len(qs); start += lookupChunk {
		batch := qs[start:min(len(qs), start+lookupChunk)]
		msgs := make([]netlink.Message, len(batch))
		for i, q := range batch {
			attrs, err := getElemAttrs(table, q.set, q.key)
			if err != nil {
				return nil, err
			}
			if msgs[i], err = nftMessage(unix.NFPROTO_INET, unix.NFT_MSG_GETSETELEM, false, attrs); err != nil {
				return nil, err
			}
		}
		sent, err := r.c.SendMessages(msgs)
		if err != nil {
			return nil, noNFTables(err)
		}
		for i := range batch {
			replies, err := r.c.Receive()
			if ok, err := found(err); err != nil {
				return nil, fmt.Errorf("look up an element of %s: %w", batch[i].set, err)
			} else if !ok {
				continue
			}
			if len(replies) != 1 || replies[0].Header.Sequence != sent[i].Header.Sequence {
				return nil, errors.New("look up elements: replies out of order")
			}
			elems, err := decodeElems(replies)
			if err != nil {
				return nil, err
			}
			if len(elems) != 1 {
				return nil, fmt.Errorf("look up an element of %s: got %d elements, want 1", batch[i].set, len(elems))
			}
			out[start+i] = &elems[0]
		}
	}
	return out, nil
}

// setNames lists the names of table's sets and maps (none when the table
// is absent).
func (r *nftReader) setNames(table string) (map[string]bool, error) {
	msgs, err := r.request(unix.NFT_MSG_GETSET, true, []netlink.Attribute{
		{Type: unix.NFTA_SET_TABLE, Data: cstr(table)},
	})
	if ok, err := found(err); !ok || err != nil {
		return map[string]bool{}, err
	}
	names := map[string]bool{}
	for _, m := range msgs {
		if len(m.Data) < 4 {
			continue
		}
		ad, err := newDecoder(m.Data[4:])
		if err != nil {
			return nil, err
		}
		var name, tbl string
		for ad.Next() {
			switch ad.Type() {
			case unix.NFTA_SET_NAME:
				name = ad.String()
			case unix.NFTA_SET_TABLE:
				tbl = ad.String()
			}
		}
		if err := ad.Err(); err != nil {
			return nil, err
		}
		if tbl == table && name != "" {
			names[name] = true
		}
	}
	return names, nil
}
