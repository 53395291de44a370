package client

import (
	"errors"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/tricopy/tricopy/intermediate/wire"
)

// Flags of a batch in a FuzzFetchStream script.
const (
	fzEndResponse = 1 << iota // the response ends after this batch
	fzNewStream               // a new stream (a reconnection) starts with this batch
	fzCorrupt                 // a data byte flipped: the CRC does not match
	fzOtherVolume             // a batch of another volume, sealed
	fzNoBatch                 // a committed batch without its batch
	fzShortBlock              // a block of 100 bytes, sealed
	fzOutOfRange              // a block index past any volume, sealed: fine for Fetch
)

// FuzzFetchStream plays a script of Fetch responses, as one or more
// streams of a Fetch call after a seq, through the client's check of each
// response (acceptFetched). Each batch of the script is two bytes: a
// signed seq step from the previous batch of the script and flags (a
// corrupt, foreign, empty or malformed batch; the end of a response; a new
// stream). The client must refuse (with wire.ErrBadCRC) exactly the first
// response holding a bad batch or a seq at or below one its stream sent
// before, and deliver nothing of it; until then it delivers every batch
// above the last one delivered, in strictly increasing seq order, each one
// of the volume and passing wire.CheckBatch.
func FuzzFetchStream(f *testing.F) {
	f.Add(uint64(0), []byte{1, 0, 1, fzEndResponse, 1, 0, 1, fzEndResponse})
	f.Add(uint64(3), []byte{2, 0, 3, fzEndResponse, 0xff, fzEndResponse})                       // a seq goes back
	f.Add(uint64(0), []byte{1, 0, 1, fzEndResponse, 0, fzEndResponse})                          // a seq repeats
	f.Add(uint64(0), []byte{5, fzEndResponse, 0xfd, fzNewStream, 1, 0, 1, 0, 1, fzEndResponse}) // a resumed stream replays
	f.Add(uint64(0), []byte{1, 0, 1, fzCorrupt | fzEndResponse})
	f.Add(uint64(0), []byte{1, fzOtherVolume})
	f.Add(uint64(0), []byte{1, fzNoBatch})
	f.Add(uint64(0), []byte{1, fzShortBlock})
	f.Add(uint64(9), []byte{10, fzOutOfRange, 0, 0})
	f.Add(uint64(1<<64-1), []byte{0, 0})
	f.Fuzz(func(t *testing.T, after uint64, script []byte) {
		// Build the streams: each a list of responses.
		var (
			streams [][]*wire.FetchResponse
			cur     *wire.FetchResponse
			seq     = after
		)
		for i := 0; i+1 < len(script) && i < 2*64; i += 2 {
			step, flags := int8(script[i]), script[i+1]
			if step >= 0 {
				seq += uint64(step)
			} else {
				seq -= min(seq, uint64(-int64(step)))
			}
			if len(streams) == 0 || flags&fzNewStream != 0 {
				streams = append(streams, nil)
				cur = nil
			}
			if cur == nil {
				cur = &wire.FetchResponse{}
				streams[len(streams)-1] = append(streams[len(streams)-1], cur)
			}
			cur.Batches = append(cur.Batches, fuzzBatch(seq, flags))
			cur.CommittedSeq, cur.CompleteSeq = seq, seq
			if flags&fzEndResponse != 0 {
				cur = nil
			}
		}

		// Play them, with a model of what must happen.
		last := after
		var delivered []uint64
	play:
		for _, stream := range streams {
			var sent, modelSent uint64
			for _, resp := range stream {
				bad := false
				prev := modelSent
				for _, cb := range resp.GetBatches() {
					b := cb.GetBatch()
					if b == nil || cb.GetSeq() == 0 || b.GetVolume() != "f" || wire.CheckBatch(b, 0) != nil || cb.GetSeq() <= prev {
						bad = true
					}
					prev = cb.GetSeq()
				}
				before := last
				deliver, err := acceptFetched("f", resp, &sent, &last)
				if bad {
					if err == nil || !errors.Is(err, wire.ErrBadCRC) {
						t.Fatalf("a response with a bad batch or a seq out of order: err %v, want one wrapping %v", err, wire.ErrBadCRC)
					}
					if last != before {
						t.Fatalf("a refused response moved the last delivered seq from %d to %d", before, last)
					}
					break play
				}
				if err != nil {
					t.Fatalf("a good response refused: %v", err)
				}
				modelSent = prev
				if sent != modelSent {
					t.Fatalf("the stream's highest seq is %d, want %d", sent, modelSent)
				}
				if !deliver {
					if len(resp.GetBatches()) != 0 {
						t.Fatalf("a response left undelivered holds batches %v", resp.GetBatches())
					}
					continue
				}
				for _, cb := range resp.GetBatches() {
					n := len(delivered)
					if cb.GetSeq() <= after || (n > 0 && cb.GetSeq() <= delivered[n-1]) {
						t.Fatalf("seq %d delivered after %v (asked after %d)", cb.GetSeq(), delivered, after)
					}
					if cb.GetBatch().GetVolume() != "f" || wire.CheckBatch(cb.GetBatch(), 0) != nil {
						t.Fatalf("a bad batch delivered: %v", cb)
					}
					delivered = append(delivered, cb.GetSeq())
				}
				if n := len(delivered); n > 0 && last != delivered[n-1] {
					t.Fatalf("last delivered seq %d, but fn saw %v", last, delivered)
				}
			}
		}
	})
}

// fuzzBatch returns a committed batch of volume f with seq, spoilt as
// flags say.
func fuzzBatch(seq uint64, flags byte) *wire.CommittedBatch {
	b := &wire.Batch{Volume: "f", Epoch: 1, VolumeSeq: seq, Blocks: testBlocks("f", seq)}
	switch {
	case flags&fzOtherVolume != 0:
		b.Volume = "g"
	case flags&fzShortBlock != 0:
		b.Blocks[0].Data = b.Blocks[0].Data[:100]
	case flags&fzOutOfRange != 0:
		b.Blocks[0].Index = 1 << 62
	}
	wire.Seal(b)
	if flags&fzCorrupt != 0 {
		d := b.Blocks[len(b.Blocks)-1].Data
		d[len(d)-1] ^= 1
	}
	cb := &wire.CommittedBatch{Seq: seq, Batch: b}
	if flags&fzNoBatch != 0 {
		cb.Batch = nil
	}
	return cb
}

// FuzzFetchResponse decodes arbitrary bytes as a Fetch response and checks
// it as the client does (acceptFetched) after a seq: it never panics; an
// accepted response keeps only batches above that seq, in increasing
// order, each of the volume and passing wire.CheckBatch; a refusal wraps
// wire.ErrBadCRC and changes nothing.
func FuzzFetchResponse(f *testing.F) {
	// Small seeds (a batch of one block, others with short blocks): the
	// fuzzer minimises what it finds, in time proportional to its size.
	short := func(seq uint64) *wire.CommittedBatch {
		cb := fuzzBatch(seq, fzShortBlock)
		cb.Batch.Blocks = cb.Batch.Blocks[:1]
		wire.Seal(cb.Batch)
		return cb
	}
	one := fuzzBatch(3, 0) // 3 % 3 == 0: one block
	for _, r := range []*wire.FetchResponse{
		{Batches: []*wire.CommittedBatch{one}, CommittedSeq: 3, CompleteSeq: 3},
		{Batches: []*wire.CommittedBatch{short(3), short(2)}},
		{Batches: []*wire.CommittedBatch{short(1)}, CommittedSeq: 2, CompleteSeq: 2},
		{Compacted: true, CommittedSeq: 9},
		{CommittedSeq: 5, CompleteSeq: 5},
	} {
		p, err := proto.Marshal(r)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(uint64(1), uint64(0), p)
	}
	f.Fuzz(func(t *testing.T, last, sent uint64, p []byte) {
		var resp wire.FetchResponse
		if proto.Unmarshal(p, &resp) != nil {
			return
		}
		l, s := last, sent
		deliver, err := acceptFetched("f", &resp, &s, &l)
		if err != nil {
			if !errors.Is(err, wire.ErrBadCRC) || l != last || s != sent {
				t.Fatalf("refusal %v (last %d→%d, sent %d→%d)", err, last, l, sent, s)
			}
			return
		}
		prev := last
		for _, cb := range resp.GetBatches() {
			if cb.GetSeq() <= prev || cb.GetBatch().GetVolume() != "f" || wire.CheckBatch(cb.GetBatch(), 0) != nil {
				t.Fatalf("accepted batch seq %d after %d: %v", cb.GetSeq(), prev, cb)
			}
			prev = cb.GetSeq()
		}
		if l != prev || s < l && len(resp.GetBatches()) > 0 {
			t.Fatalf("last %d, sent %d after delivering up to %d", l, s, prev)
		}
		if !deliver && len(resp.GetBatches()) > 0 {
			t.Fatal("batches left undelivered")
		}
	})
}
