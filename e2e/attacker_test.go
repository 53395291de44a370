package e2e

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"maps"
	"math"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	grpcstatus "google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/tricopy/tricopy/intermediate/auth"
	"github.com/tricopy/tricopy/intermediate/wire"
)

// Settings of TestAttacker.
const (
	// defaultAttackDuration is how long the attack lasts unless
	// TRICOPY_ATTACK_DURATION says otherwise.
	defaultAttackDuration = 60 * time.Second
	// attackCallTimeout bounds each call and connection of the attacker.
	attackCallTimeout = 5 * time.Second
	// attackPause is the attacker's pause between two attempts, so that it
	// does not take the whole machine from the legitimate writer.
	attackPause = 2 * time.Millisecond
	// attackVolumeSize is the size of the legitimate volume a.
	attackVolumeSize = "256MiB"
	// attackBlocks is its block count, which the attacker knows.
	attackBlocks = 256 << 20 / wire.BlockSize
	// maxMessage is the intermediate's default gRPC message limit.
	maxMessage = wire.DefaultMaxMessage + 64<<10
)

// rawCodec sends and receives messages as the bytes they are: the attacker
// sends mutated protobuf encodings the generated code could not produce.
// Its name is that of the protobuf codec, so the server decodes them with
// it.
type rawCodec struct{}

func (rawCodec) Marshal(v any) ([]byte, error) {
	b, ok := v.(*[]byte)
	if !ok {
		return nil, fmt.Errorf("raw codec: cannot marshal %T", v)
	}
	return *b, nil
}

func (rawCodec) Unmarshal(data []byte, v any) error {
	b, ok := v.(*[]byte)
	if !ok {
		return fmt.Errorf("raw codec: cannot unmarshal into %T", v)
	}
	*b = append((*b)[:0], data...)
	return nil
}

func (rawCodec) Name() string { return "proto" }

// attackLog counts the outcomes of the attacker's attempts and keeps those
// that must not happen. It is safe for concurrent use.
type attackLog struct {
	mu     sync.Mutex
	counts map[string]int
	bad    []string // the first ones
	nbad   int
}

func newAttackLog() *attackLog { return &attackLog{counts: map[string]int{}} }

// count counts one attempt whose outcome is key.
func (l *attackLog) count(key string) {
	l.mu.Lock()
	l.counts[key]++
	l.mu.Unlock()
}

// fail records an outcome that must not happen.
func (l *attackLog) fail(format string, args ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.nbad++
	if len(l.bad) < 20 {
		l.bad = append(l.bad, fmt.Sprintf(format, args...))
	}
}

// table returns the counts, one "count  outcome" line each, sorted by
// outcome, and their total.
func (l *attackLog) table() (string, int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	var b strings.Builder
	total := 0
	for _, k := range slices.Sorted(maps.Keys(l.counts)) {
		fmt.Fprintf(&b, "%8d  %s\n", l.counts[k], k)
		total += l.counts[k]
	}
	return b.String(), total
}

// attackTargets are the addresses the attacker goes for.
type attackTargets struct {
	grpc, raft, admin string
	// secondary is the legitimate secondary's ID.
	secondary string
}

// grpcFuzzer sends mutated protobuf messages to every method of the
// intermediate service over a connection authenticated with a certificate
// of the deployment's CA that grants only volume z.
type grpcFuzzer struct {
	r   *rand.Rand
	cc  *grpc.ClientConn
	log *attackLog
	tg  attackTargets
	big []byte // random bytes for the oversized messages
}

// fuzzMethod is one method of the service as the fuzzer calls it.
type fuzzMethod struct {
	name string
	desc *grpc.StreamDesc // nil for a unary method
	// build returns the messages of one call (a valid one, before
	// mutation).
	build func(f *grpcFuzzer) []proto.Message
	// allowed reports whether a certificate granting primary/z and
	// secondary/z may make the call whose first message decodes to m.
	allowed func(m proto.Message, tg attackTargets) bool
}

func streamDesc(name string, client bool) *grpc.StreamDesc {
	return &grpc.StreamDesc{StreamName: name, ServerStreams: true, ClientStreams: client}
}

// fuzzMethods are the methods of the service.
var fuzzMethods = []fuzzMethod{
	{name: "Submit", desc: streamDesc("Submit", true), build: (*grpcFuzzer).submit,
		allowed: func(m proto.Message, _ attackTargets) bool {
			o := m.(*wire.SubmitRequest).GetOpen()
			return o != nil && o.GetVolume() == "z"
		}},
	{name: "Fetch", desc: streamDesc("Fetch", false), build: func(f *grpcFuzzer) []proto.Message {
		req := &wire.FetchRequest{Group: f.group(), Volume: f.volume()}
		if f.r.IntN(2) == 0 {
			req.AfterSeq, req.MaxBatches = f.u64(), uint32(f.u64())
		}
		return []proto.Message{req}
	}, allowed: func(m proto.Message, _ attackTargets) bool { return m.(*wire.FetchRequest).GetVolume() == "z" }},
	{name: "ReadVolume", desc: streamDesc("ReadVolume", false), build: func(f *grpcFuzzer) []proto.Message {
		return []proto.Message{&wire.ReadVolumeRequest{Group: f.group(), Volume: f.volume()}}
	}, allowed: func(m proto.Message, _ attackTargets) bool { return m.(*wire.ReadVolumeRequest).GetVolume() == "z" }},
	{name: "ReadRegions", desc: streamDesc("ReadRegions", false), build: func(f *grpcFuzzer) []proto.Message {
		return []proto.Message{&wire.ReadRegionsRequest{Group: f.group(), Secondary: f.secondaryID()}}
	}, allowed: func(m proto.Message, tg attackTargets) bool {
		// Its own secondaries of z, which it may register.
		return m.(*wire.ReadRegionsRequest).GetSecondary() != tg.secondary
	}},
	{name: "Coordinate", desc: streamDesc("Coordinate", true), build: (*grpcFuzzer).coordinate,
		allowed: func(m proto.Message, _ attackTargets) bool {
			h := m.(*wire.CoordinateRequest).GetHello()
			return h != nil && h.GetVolume() == "z"
		}},
	{name: "Status", build: func(*grpcFuzzer) []proto.Message { return []proto.Message{&wire.StatusRequest{}} },
		allowed: func(proto.Message, attackTargets) bool { return true }},
	{name: "Join", build: func(f *grpcFuzzer) []proto.Message {
		return []proto.Message{&wire.JoinRequest{Id: f.pick("i1", "i2", "i9", "z", ""), RaftAddr: f.pick("127.0.0.1:1", f.tg.raft, "", "garbage")}}
	}},
	{name: "Remove", build: func(f *grpcFuzzer) []proto.Message {
		return []proto.Message{&wire.RemoveRequest{Id: f.pick("i1", "i2", "", "z")}}
	}},
	{name: "RemoveSecondary", build: func(f *grpcFuzzer) []proto.Message {
		return []proto.Message{&wire.RemoveSecondaryRequest{Group: f.group(), Id: f.secondaryID()}}
	}},
	{name: "Promote", build: func(f *grpcFuzzer) []proto.Message {
		req := &wire.PromoteRequest{Group: f.group(), PromotionId: f.pick("p-evil", "p-"+strconv.Itoa(f.r.IntN(9)), "", "with space", strings.Repeat("p", 65)),
			By: "attacker"}
		if f.r.IntN(2) == 0 {
			req.AtSeq, req.FromEpoch = f.u64(), f.u64()
		}
		return []proto.Message{req}
	}},
	{name: "Failback", build: func(f *grpcFuzzer) []proto.Message {
		return []proto.Message{&wire.FailbackRequest{Group: f.group(), Secondary: f.secondaryID(), Volume: f.volume(), Bitmap: f.bytes(f.r.IntN(64))}}
	}, allowed: func(m proto.Message, tg attackTargets) bool {
		r := m.(*wire.FailbackRequest)
		return r.GetVolume() == "z" && r.GetSecondary() != tg.secondary
	}},
}

// pick returns one of choices at random.
func (f *grpcFuzzer) pick(choices ...string) string { return choices[f.r.IntN(len(choices))] }

// volume returns a volume name: a (the legitimate one), b (nobody's), z
// (the attacker's), or a malformed one.
func (f *grpcFuzzer) volume() string {
	return f.pick("a", "a", "a", "b", "b", "z", "z", "z", "", "A", "a ", "../a", "z/../a", "a\x00", strings.Repeat("z", 65), "Ω")
}

// group returns a group name, mostly the deployment's.
func (f *grpcFuzzer) group() string {
	return f.pick("default", "default", "default", "default", "default", "default", "default", "default", "", "other", "default\x00")
}

// secondaryID returns a secondary's ID: the legitimate one, the
// attacker's, or a malformed one.
func (f *grpcFuzzer) secondaryID() string {
	return f.pick(f.tg.secondary, f.tg.secondary, "evil", "evil-"+strconv.Itoa(f.r.IntN(3)), "", "a b", strings.Repeat("s", 100))
}

// u64 returns a number: small ones, limits, and random ones.
func (f *grpcFuzzer) u64() uint64 {
	switch f.r.IntN(9) {
	case 0:
		return 0
	case 1:
		return 1
	case 2:
		return uint64(f.r.IntN(100))
	case 3:
		return 1<<32 + uint64(f.r.IntN(4))
	case 4:
		return 1<<40 - uint64(f.r.IntN(2))
	case 5:
		return 1 << 63
	case 6:
		return math.MaxUint64
	case 7:
		return uint64(f.r.IntN(1 << 20))
	default:
		return f.r.Uint64()
	}
}

// blockCount returns an unusual block count of a volume: none, small,
// huge (at and beyond the limit of a registration, beyond what a file
// system may hold), or random.
func (f *grpcFuzzer) blockCount() uint64 {
	return []uint64{0, 1, 16, 1 << 32, 1 << 33, 1 << 35, 1 << 38, 1<<40 - 1, 1 << 40, math.MaxUint64, f.r.Uint64()}[f.r.IntN(11)]
}

// bytes returns n random bytes.
func (f *grpcFuzzer) bytes(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(f.r.Uint32())
	}
	return b
}

// blocks returns 1 to 4 block writes: mostly in range with 4 KiB of data,
// sometimes at a huge index or with data of the wrong size.
func (f *grpcFuzzer) blocks() []*wire.Block {
	bs := make([]*wire.Block, 1+f.r.IntN(4))
	for i := range bs {
		b := &wire.Block{Index: uint64(f.r.IntN(16)), Data: f.bytes(wire.BlockSize)}
		switch f.r.IntN(8) {
		case 0:
			b.Index = f.u64()
		case 1:
			b.Data = f.bytes(f.r.IntN(2 * wire.BlockSize))
		}
		bs[i] = b
	}
	return bs
}

// submit returns a Submit stream: an open, then batches and reports.
func (f *grpcFuzzer) submit() []proto.Message {
	vol := f.volume()
	open := &wire.SubmitOpen{Group: f.group(), Volume: vol, Epoch: 1, BlockCount: attackBlocks}
	switch f.r.IntN(6) {
	case 0:
		open.Epoch = f.u64()
	case 1, 2:
		open.BlockCount = f.blockCount()
	}
	msgs := []proto.Message{&wire.SubmitRequest{Msg: &wire.SubmitRequest_Open{Open: open}}}
	vseq := 1 + uint64(f.r.IntN(8))
	for range f.r.IntN(4) {
		if f.r.IntN(5) == 0 {
			msgs = append(msgs, &wire.SubmitRequest{Msg: &wire.SubmitRequest_Report{Report: &wire.PrimaryReport{
				State: f.pick("PAIR", "SUSP", "FENCED", "", "Ω"), DirtyRegions: f.u64(), DurableSeq: f.u64(), Reason: f.pick("", "evil")}}})
			continue
		}
		var batches []*wire.Batch
		for range 1 + f.r.IntN(3) {
			b := &wire.Batch{Volume: vol, Epoch: 1, VolumeSeq: vseq, Blocks: f.blocks()}
			switch f.r.IntN(10) {
			case 0:
				b.Volume = f.volume()
			case 1:
				b.Epoch = f.u64()
			case 2:
				b.VolumeSeq = f.u64() // backwards, repeated or far ahead
			}
			b.Crc = wire.BatchCRC(b)
			if f.r.IntN(6) == 0 {
				b.Crc = f.r.Uint32() // a bad CRC
			}
			batches = append(batches, b)
			vseq++
		}
		if f.r.IntN(60) == 0 {
			batches = append(batches, f.oversized(vol, vseq))
		}
		msgs = append(msgs, &wire.SubmitRequest{Msg: &wire.SubmitRequest_Batches{Batches: &wire.SubmitBatches{Batches: batches}}})
	}
	return msgs
}

// oversized returns a batch that makes its message about the size limit
// (under or over it); its CRC is wrong, so that it never fills the journal.
func (f *grpcFuzzer) oversized(vol string, vseq uint64) *wire.Batch {
	size := maxMessage - 1<<20 + f.r.IntN(2<<20)
	b := &wire.Batch{Volume: vol, Epoch: 1, VolumeSeq: vseq}
	for off := 0; off+wire.BlockSize <= size && off+wire.BlockSize <= len(f.big); off += wire.BlockSize {
		b.Blocks = append(b.Blocks, &wire.Block{Index: uint64(off / wire.BlockSize), Data: f.big[off : off+wire.BlockSize]})
	}
	b.Crc = wire.BatchCRC(b) + 1
	return b
}

// pad returns b with an unknown field that makes it about the size limit
// of a message, under or over it: the server skips the field of a
// message under the limit, and must refuse one over it.
func (f *grpcFuzzer) pad(b []byte) []byte {
	n := min(len(f.big), maxMessage-len(b)-16-1<<20+f.r.IntN(2<<20))
	out := binary.AppendUvarint(slices.Clip(b), 1000<<3|2)
	out = binary.AppendUvarint(out, uint64(n))
	return append(out, f.big[:n]...)
}

// coordinate returns a Coordinate stream: a hello, then prepared, applied
// and reports.
func (f *grpcFuzzer) coordinate() []proto.Message {
	hello := &wire.SecondaryHello{Group: f.group(), Secondary: f.secondaryID(), Volume: f.volume(),
		Addr: f.pick("127.0.0.1:1", f.tg.admin, "", "garbage", "[::1]:99999"), AppliedSeq: f.u64(), DurableSeq: f.u64()}
	msgs := []proto.Message{&wire.CoordinateRequest{Msg: &wire.CoordinateRequest_Hello{Hello: hello}}}
	for range f.r.IntN(4) {
		var m *wire.CoordinateRequest
		switch f.r.IntN(3) {
		case 0:
			m = &wire.CoordinateRequest{Msg: &wire.CoordinateRequest_Prepared{Prepared: &wire.PreparedSeq{Seq: f.u64()}}}
		case 1:
			m = &wire.CoordinateRequest{Msg: &wire.CoordinateRequest_Applied{Applied: &wire.AppliedSeq{Seq: f.u64()}}}
		default:
			m = &wire.CoordinateRequest{Msg: &wire.CoordinateRequest_Report{Report: &wire.SecondaryReport{
				State: f.pick("PAIR", "FAILED", "SUSP", "Ω"), FetchedSeq: f.u64(), ResyncDone: f.u64(), ResyncTotal: f.u64()}}}
		}
		msgs = append(msgs, m)
	}
	return msgs
}

// mutate changes b at random: flips and sets bytes, truncates, extends,
// inserts a random field, duplicates a piece.
func (f *grpcFuzzer) mutate(b []byte) []byte {
	b = slices.Clone(b)
	for range 1 + f.r.IntN(3) {
		switch f.r.IntN(6) {
		case 0:
			if len(b) > 0 {
				b[f.r.IntN(len(b))] ^= 1 << f.r.IntN(8)
			}
		case 1:
			if len(b) > 0 {
				b[f.r.IntN(len(b))] = byte(f.r.Uint32())
			}
		case 2:
			b = b[:f.r.IntN(len(b)+1)]
		case 3:
			b = append(b, f.bytes(1+f.r.IntN(32))...)
		case 4:
			field := binary.AppendUvarint(nil, uint64(1+f.r.IntN(20))<<3|uint64(f.r.IntN(6)))
			b = append(append(b, field...), f.bytes(f.r.IntN(16))...)
		case 5:
			if len(b) > 0 {
				i := f.r.IntN(len(b))
				j := i + f.r.IntN(len(b)-i+1)
				b = append(b, b[i:j]...)
			}
		}
	}
	return b
}

// run calls methods at random until ctx is done, with messages built
// valid and then changed at random (fields, then bytes).
// It starts with the seed corpus, unmutated.
func (f *grpcFuzzer) run(ctx context.Context) {
	for _, s := range f.seeds() {
		if ctx.Err() != nil {
			return
		}
		i := slices.IndexFunc(fuzzMethods, func(m fuzzMethod) bool { return m.name == s.method })
		f.call(ctx, fuzzMethods[i], s.msgs, false)
	}
	for ctx.Err() == nil {
		m := fuzzMethods[f.r.IntN(len(fuzzMethods))]
		f.call(ctx, m, m.build(f), true)
		time.Sleep(attackPause)
	}
}

// fuzzSeed is one call of the seed corpus.
type fuzzSeed struct {
	method string
	msgs   []proto.Message
}

// seeds returns the seed corpus: valid calls an attacker holding the
// grants of volume z would try first.
func (f *grpcFuzzer) seeds() []fuzzSeed {
	open := func(vol string, blocks uint64) *wire.SubmitRequest {
		return &wire.SubmitRequest{Msg: &wire.SubmitRequest_Open{Open: &wire.SubmitOpen{Group: "default", Volume: vol, Epoch: 1, BlockCount: blocks}}}
	}
	batch := &wire.Batch{Volume: "a", Epoch: 1, VolumeSeq: 1, Blocks: []*wire.Block{{Index: 0, Data: make([]byte, wire.BlockSize)}}}
	batch.Crc = wire.BatchCRC(batch)
	return []fuzzSeed{
		// Fence every primary of the group.
		{"Promote", []proto.Message{&wire.PromoteRequest{Group: "default", PromotionId: "p-seed", By: "attacker"}}},
		// Overwrite volume a's superblock.
		{"Submit", []proto.Message{open("a", attackBlocks),
			&wire.SubmitRequest{Msg: &wire.SubmitRequest_Batches{Batches: &wire.SubmitBatches{Batches: []*wire.Batch{batch}}}}}},
		// Read volume a.
		{"Fetch", []proto.Message{&wire.FetchRequest{Group: "default", Volume: "a"}}},
		{"ReadVolume", []proto.Message{&wire.ReadVolumeRequest{Group: "default", Volume: "a"}}},
		{"ReadRegions", []proto.Message{&wire.ReadRegionsRequest{Group: "default", Secondary: f.tg.secondary}}},
		// Take the place of a's secondary, or take it out.
		{"Coordinate", []proto.Message{&wire.CoordinateRequest{Msg: &wire.CoordinateRequest_Hello{Hello: &wire.SecondaryHello{
			Group: "default", Secondary: f.tg.secondary, Volume: "a", Addr: f.tg.admin}}}}},
		{"Failback", []proto.Message{&wire.FailbackRequest{Group: "default", Secondary: f.tg.secondary, Volume: "a"}}},
		{"RemoveSecondary", []proto.Message{&wire.RemoveSecondaryRequest{Group: "default", Id: f.tg.secondary}}},
		// Change the cluster.
		{"Join", []proto.Message{&wire.JoinRequest{Id: "i9", RaftAddr: "127.0.0.1:1"}}},
		{"Remove", []proto.Message{&wire.RemoveRequest{Id: "i1"}}},
		// Its own volume, with more blocks than a file may hold.
		{"Submit", []proto.Message{open("z", 1<<35)}},
	}
}

// call makes one call of m with msgs, mutated at random if mutate, and
// counts and judges its outcome.
func (f *grpcFuzzer) call(parent context.Context, m fuzzMethod, msgs []proto.Message, mutate bool) {
	raw := make([][]byte, len(msgs))
	for i, msg := range msgs {
		b, err := proto.Marshal(msg)
		if err != nil {
			f.log.fail("marshal a %s message: %v", m.name, err)
			return
		}
		if mutate && f.r.IntN(3) == 0 {
			b = f.mutate(b)
		}
		raw[i] = b
	}
	if mutate && f.r.IntN(150) == 0 {
		raw[0] = f.pad(raw[0])
	}
	// What the server decodes: the fuzzer decodes the same bytes with the
	// same library.
	first := msgs[0].ProtoReflect().New().Interface()
	decoded := proto.Unmarshal(raw[0], first) == nil
	allowed := decoded && m.allowed != nil && m.allowed(first, f.tg)
	// The volumes of the batches a Submit stream sends, by volume seq.
	batchVolumes := map[uint64][]string{}
	if m.name == "Submit" {
		for _, b := range raw[1:] {
			var req wire.SubmitRequest
			if proto.Unmarshal(b, &req) != nil {
				continue
			}
			for _, bt := range req.GetBatches().GetBatches() {
				batchVolumes[bt.GetVolumeSeq()] = append(batchVolumes[bt.GetVolumeSeq()], bt.GetVolume())
			}
		}
	}

	ctx, cancel := context.WithTimeout(parent, attackCallTimeout)
	defer cancel()
	opt := grpc.ForceCodec(rawCodec{})
	method := "/tricopy.wire.v1.Intermediate/" + m.name
	var answers [][]byte
	var err error
	if m.desc == nil {
		var out []byte
		if err = f.cc.Invoke(ctx, method, &raw[0], &out, opt); err == nil {
			answers = append(answers, out)
		}
	} else {
		answers, err = rawStream(ctx, f.cc, m.desc, method, raw, opt)
	}
	if parent.Err() != nil {
		return // the attack ended under the call
	}

	outcome := outcomeOf(err)
	if len(answers) > 0 {
		outcome = "accepted, then " + outcome
	}
	f.log.count("gRPC " + m.name + ": " + outcome)
	switch {
	case len(answers) > 0 && !allowed:
		f.log.fail("gRPC %s was served (%d answers, then %v) although the certificate does not grant it: first message %s",
			m.name, len(answers), err, describe(first, decoded))
	case !refusal(err, allowed):
		f.log.fail("gRPC %s: %v: not a refusal; first message %s", m.name, err, describe(first, decoded))
	}
	if m.name == "Submit" {
		for _, a := range answers {
			var resp wire.SubmitResponse
			if proto.Unmarshal(a, &resp) != nil {
				continue
			}
			for _, ack := range resp.GetAcks().GetAcks() {
				for _, v := range batchVolumes[ack.GetVolumeSeq()] {
					if v != "z" {
						f.log.fail("gRPC Submit acknowledged volume seq %d, sent as a batch of volume %q", ack.GetVolumeSeq(), v)
					}
				}
			}
		}
	}
}

// rawStream runs one stream call: it sends msgs, closes its side and
// receives up to 4 answers; it returns them and the error that ended the
// stream (nil when the server ended it with OK, or after 4 answers).
func rawStream(ctx context.Context, cc *grpc.ClientConn, desc *grpc.StreamDesc, method string, msgs [][]byte, opts ...grpc.CallOption) ([][]byte, error) {
	s, err := cc.NewStream(ctx, desc, method, opts...)
	if err != nil {
		return nil, err
	}
	for i := range msgs {
		if err := s.SendMsg(&msgs[i]); err != nil {
			break // io.EOF: the server ended the stream; RecvMsg says why
		}
	}
	if err := s.CloseSend(); err != nil {
		return nil, err
	}
	var answers [][]byte
	for len(answers) < 4 {
		var out []byte
		if err := s.RecvMsg(&out); errors.Is(err, io.EOF) {
			return answers, nil // the server ended the stream with OK
		} else if err != nil {
			return answers, err
		}
		answers = append(answers, out)
	}
	return answers, nil
}

// outcomeOf names the outcome of a call that ended with err.
func outcomeOf(err error) string {
	if err == nil {
		return "OK"
	}
	st := grpcstatus.Convert(err)
	switch {
	case st.Code() == codes.Internal && strings.Contains(st.Message(), "unmarshal"):
		return "Internal (undecodable message)"
	case st.Code() == codes.ResourceExhausted && strings.Contains(st.Message(), "larger than max"):
		return "ResourceExhausted (message over the limit)"
	case st.Code() == codes.Unavailable:
		if we := new(wire.Error); errors.As(wire.FromStatus(err), &we) {
			return "Unavailable (" + strings.ToLower(strings.TrimPrefix(we.Code.String(), "ERROR_CODE_")) + ")"
		}
		return "Unavailable"
	}
	if we := new(wire.Error); errors.As(wire.FromStatus(err), &we) {
		return st.Code().String() + " (" + strings.ToLower(strings.TrimPrefix(we.Code.String(), "ERROR_CODE_")) + ")"
	}
	return st.Code().String()
}

// refusal reports whether err, which ended a call, is a refusal the
// attacker may get: the call was refused for its grants, its content, its
// size, or the node's state, or (allowed calls only) it was served until
// the attacker hung up.
func refusal(err error, allowed bool) bool {
	if err == nil {
		return allowed
	}
	st := grpcstatus.Convert(err)
	switch st.Code() {
	case codes.PermissionDenied, codes.InvalidArgument, codes.Unavailable, codes.ResourceExhausted,
		codes.FailedPrecondition, codes.OutOfRange, codes.DataLoss, codes.NotFound, codes.Aborted:
		return true
	case codes.Internal:
		return strings.Contains(st.Message(), "unmarshal")
	case codes.DeadlineExceeded, codes.Canceled:
		return allowed
	}
	return false
}

// describe shows a decoded first message for a failure report.
func describe(m proto.Message, decoded bool) string {
	if !decoded {
		return "(undecodable)"
	}
	s := fmt.Sprintf("%v", m)
	if len(s) > 300 {
		s = s[:300] + "..."
	}
	return s
}

// garbageLoop sends garbage without a valid TLS session to the gRPC port,
// the Raft port and the admin API until ctx is done: random bytes, plain
// HTTP, a malformed TLS record, a TLS handshake without a certificate, and
// gRPC calls over plain TCP.
func garbageLoop(ctx context.Context, r *rand.Rand, tg attackTargets, log *attackLog) {
	targets := []struct{ name, addr string }{{"gRPC", tg.grpc}, {"Raft", tg.raft}, {"admin API", tg.admin}}
	for ctx.Err() == nil {
		tgt := targets[r.IntN(len(targets))]
		mode := r.IntN(5)
		var what, outcome string
		switch mode {
		case 0:
			what = "random bytes"
			outcome = sendGarbage(tgt.addr, nil, randomBytes(r, 1+r.IntN(4096)))
		case 1:
			what = "plain HTTP"
			req := fmt.Sprintf("%s /v1/%s HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}",
				[]string{"GET", "POST", "PRI"}[r.IntN(3)], []string{"promote", "status", "fsck", "unapplied"}[r.IntN(4)])
			if r.IntN(2) == 0 {
				req = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + string(randomBytes(r, r.IntN(256)))
			}
			outcome = sendGarbage(tgt.addr, nil, []byte(req))
		case 2:
			what = "malformed TLS record"
			rec := []byte{0x16, 0x03, byte(r.IntN(5)), 0, 0}
			body := randomBytes(r, r.IntN(512))
			binary.BigEndian.PutUint16(rec[3:], uint16(len(body)+r.IntN(2)))
			outcome = sendGarbage(tgt.addr, nil, append(rec, body...))
		case 3:
			what = "TLS without a certificate"
			outcome = sendGarbage(tgt.addr, noCertConfig(), randomBytes(r, 1+r.IntN(512)))
		default:
			what = "gRPC over plain TCP"
			tgt = targets[0]
			outcome = plainGRPC(ctx, tgt.addr, r)
		}
		if ctx.Err() != nil {
			return
		}
		log.count(fmt.Sprintf("%s, %s: %s", tgt.name, what, outcome))
		if strings.HasPrefix(outcome, "served") {
			log.fail("%s served %s: %s", tgt.name, what, outcome)
		}
		time.Sleep(attackPause)
	}
}

// randomBytes returns n random bytes.
func randomBytes(r *rand.Rand, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// sendGarbage connects to addr (with TLS when cfg is set), writes data and
// reads the answer; it names what happened. An outcome starting with
// "served" means the server took the garbage for a request.
func sendGarbage(addr string, cfg *tls.Config, data []byte) string {
	conn, err := net.DialTimeout("tcp", addr, attackCallTimeout)
	if err != nil {
		return "dial failed"
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(2 * time.Second))
	var c net.Conn = conn
	if cfg != nil {
		tc := tls.Client(conn, cfg)
		if err := tc.Handshake(); err != nil {
			return "handshake refused"
		}
		c = tc
	}
	if _, err := c.Write(data); err != nil {
		return "closed"
	}
	buf := make([]byte, 512)
	n, err := io.ReadAtLeast(c, buf, 1)
	var ne net.Error
	switch {
	case n > 0 && buf[0] == 0x15:
		return "TLS alert"
	case n > 0 && bytes.HasPrefix(buf[:n], []byte("HTTP/1.0 400 Bad Request")):
		return "HTTP 400 (plain HTTP to HTTPS)"
	case n > 0 && bytes.HasPrefix(buf[:n], []byte("HTTP/")):
		return "served: " + strings.SplitN(string(buf[:n]), "\r\n", 2)[0]
	case n > 0:
		return "answered bytes"
	case cfg != nil && err != nil && strings.Contains(err.Error(), "certificate required"):
		return "handshake refused (certificate required)"
	case errors.As(err, &ne) && ne.Timeout():
		return "no answer in 2s (the server waits for more)"
	default:
		return "closed"
	}
}

// plainGRPC calls a random method over plain TCP.
func plainGRPC(ctx context.Context, addr string, r *rand.Rand) string {
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return "client: " + err.Error()
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(ctx, attackCallTimeout)
	defer cancel()
	m := fuzzMethods[r.IntN(len(fuzzMethods))]
	msg := []byte{}
	var answers [][]byte
	if m.desc == nil {
		var out []byte
		err = cc.Invoke(ctx, "/tricopy.wire.v1.Intermediate/"+m.name, &msg, &out, grpc.ForceCodec(rawCodec{}))
		if err == nil {
			answers = append(answers, out)
		}
	} else {
		answers, err = rawStream(ctx, cc, m.desc, "/tricopy.wire.v1.Intermediate/"+m.name, [][]byte{msg}, grpc.ForceCodec(rawCodec{}))
	}
	if len(answers) > 0 {
		return "served " + m.name
	}
	return outcomeOf(err)
}

// adminFuzzer sends requests to the secondary's admin API with a
// certificate of the CA that holds no admin grant (and, sometimes, with
// none): status is open to it, the rest must be refused.
type adminFuzzer struct {
	r    *rand.Rand
	addr string
	hc   *http.Client // with the certificate
	none *http.Client // without a certificate
	log  *attackLog
}

// adminPaths are the paths the admin fuzzer asks for.
var adminPaths = []string{"/v1/status", "/v1/promote", "/v1/unapplied", "/v1/fsck", "/v1/promote/", "/v1//promote",
	"/V1/promote", "/v1/fsck?x=1", "/", "/metrics", "/debug/pprof/", "/v1/promote%00", "/v1/../v1/fsck"}

func (f *adminFuzzer) run(ctx context.Context) {
	for ctx.Err() == nil {
		method := []string{http.MethodGet, http.MethodGet, http.MethodPost, http.MethodPost, http.MethodPut, http.MethodDelete, http.MethodHead}[f.r.IntN(7)]
		path := adminPaths[f.r.IntN(len(adminPaths))]
		var body []byte
		if method == http.MethodPost || method == http.MethodPut {
			body = []byte(fmt.Sprintf(`{"id":"p-evil-%d","n":%d,"epoch":%d,"drained":%v,"by":"attacker"}`, f.r.IntN(9), f.r.IntN(100), f.r.IntN(4), f.r.IntN(2) == 0))
			switch f.r.IntN(4) {
			case 0:
				body[f.r.IntN(len(body))] = byte(f.r.Uint32())
			case 1:
				body = append(body, randomBytes(f.r, f.r.IntN(1<<20))...)
			}
		}
		hc, withCert := f.hc, true
		if f.r.IntN(8) == 0 {
			hc, withCert = f.none, false
		}
		actx, cancel := context.WithTimeout(ctx, attackCallTimeout)
		ans := adminCall(actx, hc, true, method, f.addr, path, body)
		cancel()
		if ctx.Err() != nil {
			return
		}
		key := fmt.Sprintf("admin API %s %s", method, path)
		switch {
		case !withCert && ans.err != nil:
			f.log.count(key + " without a certificate: handshake refused")
		case !withCert:
			f.log.count(key + " without a certificate: served")
			f.log.fail("admin API %s %s without a certificate: %v", method, path, ans)
		case ans.err != nil:
			// The server answered before it read a large body and closed
			// the connection (broken pipe), or was slow: not a service.
			f.log.count(key + ": request failed")
		default:
			f.log.count(fmt.Sprintf("%s: %d", key, ans.code))
			statusRead := (method == http.MethodGet || method == http.MethodHead) && path == "/v1/status"
			switch {
			case statusRead && ans.code == http.StatusOK:
			case ans.code >= 200 && ans.code < 300, ans.code >= 500:
				f.log.fail("admin API %s %s with a certificate without an admin grant: %v", method, path, ans)
			}
		}
		time.Sleep(attackPause)
	}
}

// dataRegions reads the data (not the holes) of the file at path, at most
// limit bytes.
func dataRegions(path string, limit int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []byte
	for off := int64(0); int64(len(out)) < limit; {
		start, err := unix.Seek(int(f.Fd()), off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			break // no data after off
		}
		if err != nil {
			return nil, fmt.Errorf("seek data in %s: %w", path, err)
		}
		end, err := unix.Seek(int(f.Fd()), start, unix.SEEK_HOLE)
		if err != nil {
			return nil, fmt.Errorf("seek hole in %s: %w", path, err)
		}
		end = min(end, start+limit-int64(len(out)))
		buf := make([]byte, end-start)
		if _, err := f.ReadAt(buf, start); err != nil && !errors.Is(err, io.EOF) {
			return nil, err
		}
		out = append(out, buf...)
		off = end
	}
	return out, nil
}

// TestAttacker runs a TLS deployment (one intermediate node, primary a,
// secondary a) while a legitimate writer writes files on the primary and
// an attacker, for TRICOPY_ATTACK_DURATION (default 60s): (i) with a valid
// certificate granting only primary/z and secondary/z, calls every gRPC
// method, first with a seed corpus of valid calls (promote the group,
// write or read a, take a's secondary's place, change the cluster, register
// z with more blocks than a file may hold), then with random and mutated
// protobuf messages (volumes a, b, z and
// malformed names, huge block indexes and counts, bad CRCs, volume seqs
// going backwards, messages about the size limit) sent as raw bytes, and
// sends the secondary's admin API mutated requests; (ii) without TLS,
// sends garbage to the gRPC port, the Raft port and the admin API. Every
// answer must be a refusal (or, for z and status, a service the grants
// allow); afterwards every process runs, volume a at the intermediate and
// on the secondary holds exactly what the writer wrote (fsck clean),
// volume b does not exist and z holds none of a's data, the logs show the
// refusals and no panic, and the secondary is in PAIR.
// TRICOPY_ATTACK_SEED replays an attack's choices (not its timing).
func TestAttacker(t *testing.T) {
	requireFUSE(t)
	dur := defaultAttackDuration
	if s := os.Getenv("TRICOPY_ATTACK_DURATION"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil {
			t.Fatalf("TRICOPY_ATTACK_DURATION: %v", err)
		}
		dur = d
	}
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("TRICOPY_ATTACK_SEED"); s != "" {
		var err error
		if seed, err = strconv.ParseUint(s, 10, 64); err != nil {
			t.Fatalf("TRICOPY_ATTACK_SEED: %v", err)
		}
	}
	t.Logf("attack of %v with seed %d (replay with TRICOPY_ATTACK_SEED=%d)", dur, seed, seed)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("failed with seed %d: rerun with TRICOPY_ATTACK_SEED=%d TRICOPY_ATTACK_DURATION=%v go test -count=1 -p 1 -run 'TestAttacker$' ./e2e/",
				seed, seed, dur)
		}
	})

	start := time.Now()
	base := t.TempDir()
	pki := makeCerts(t, filepath.Join(base, "certs"), "--nodes", "i1", "--volumes", "a")
	makeCerts(t, pki.dir, "--issue", "attacker=primary/z+secondary/z")
	admin := pki.flags("admin")
	nodes, nodeMetrics := startTLSIntermediates(t, filepath.Join(base, "inter"), 1, pki, admin)
	nd, addrs := nodes[0], nodeAddrs(nodes)
	prim := mirrorSpec{volume: "a", data: filepath.Join(base, "data", "a"), mnt: filepath.Join(base, "primary", "a"),
		addrs: addrs, size: attackVolumeSize, extra: pki.flags("primary")}
	pm := startMirrored(t, prim)
	pollTLSStatus(t, pairTimeout, "volume a in PAIR", addrs, admin, func(d tlsStatusDoc, _ int) bool {
		st, _, _ := d.volumeState("a", "")
		return st == "PAIR"
	})
	secMetrics := freeAddr(t)
	sec := secondarySpec{volume: "a", data: filepath.Join(base, "secdata", "a"), mnt: filepath.Join(base, "secondary", "a"),
		listen: freeAddr(t), addrs: addrs, extra: append(pki.flags("secondary"), "--metrics", secMetrics)}
	sm := startSecondary(t, sec)
	t.Logf("deployment up in %v", time.Since(start).Round(time.Millisecond))

	dir := filepath.Join(prim.mnt, "w")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	w := startWriter(dir, seed, 0)
	t.Cleanup(func() { w.cleanUp(t) })
	w.waitCount(t, 5, "the legitimate writer to start")

	attackerCert := pki.material(t, "attacker")
	cc, err := grpc.NewClient(nd.listen, grpc.WithTransportCredentials(credentials.NewTLS(attackerCert.ClientConfig(auth.RoleIntermediate))),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxMessage)))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	tg := attackTargets{grpc: nd.listen, raft: nd.raft, admin: sec.listen, secondary: "a"}
	big := randomBytes(rand.New(rand.NewPCG(seed, 99)), maxMessage+1<<20)
	log := newAttackLog()
	ctx, cancel := context.WithTimeout(context.Background(), dur)
	defer cancel()
	// A process that dies ends the attack: the test fails on it below.
	go func() {
		select {
		case <-nd.p.exited:
		case <-pm.exited:
		case <-sm.exited:
		case <-ctx.Done():
		}
		cancel()
	}()
	var wg sync.WaitGroup
	wg.Go(func() {
		(&grpcFuzzer{r: rand.New(rand.NewPCG(seed, 1)), cc: cc, log: log, tg: tg, big: big}).run(ctx)
	})
	wg.Go(func() {
		(&adminFuzzer{r: rand.New(rand.NewPCG(seed, 2)), addr: sec.listen, log: log,
			hc: adminClient(attackerCert.ClientConfig(auth.RoleSecondary)), none: adminClient(noCertConfig())}).run(ctx)
	})
	wg.Go(func() { garbageLoop(ctx, rand.New(rand.NewPCG(seed, 3)), tg, log) })
	attackStart := time.Now()
	wg.Wait()
	table, total := log.table()
	t.Logf("%d attempts in %v; outcomes:\n%s", total, time.Since(attackStart).Round(time.Millisecond), table)
	for _, b := range log.bad {
		t.Errorf("attack: %s", b)
	}
	if log.nbad > len(log.bad) {
		t.Errorf("attack: %d more like these", log.nbad-len(log.bad))
	}

	// No crash: every process still runs.
	for _, p := range []struct {
		name   string
		exited chan struct{}
	}{{"intermediate " + nd.id, nd.p.exited}, {"primary", pm.exited}, {"secondary", sm.exited}} {
		select {
		case <-p.exited:
			t.Fatalf("the %s died during the attack", p.name)
		default:
		}
	}
	w.finish(t)
	if w.err != nil {
		t.Fatalf("the legitimate writer failed during the attack after %d files: %v", len(w.acked), w.err)
	}
	t.Logf("the legitimate writer wrote %d files during the attack (longest %v)", len(w.acked), w.maxPause.Round(time.Millisecond))
	if len(w.acked) < 10 {
		t.Errorf("the legitimate writer wrote only %d files during the attack", len(w.acked))
	}

	// Secondaries the attacker registered for z (its grant allows that)
	// hold the group's validated point back: the operator removes them.
	doc, _ := tlsStatus(t, addrs, admin)
	for _, v := range doc.Volumes {
		for _, s := range v.Secondaries {
			if s.ID == tg.secondary && v.Name != "a" {
				t.Errorf("the legitimate secondary %q is registered for volume %s", s.ID, v.Name)
			}
			if s.ID != tg.secondary {
				t.Logf("removing secondary %q of volume %s, registered by the attacker", s.ID, v.Name)
				run(t, "", tricopyBin, append([]string{"secondary", "remove", "--name", s.ID, "--intermediate", strings.Join(addrs, ","), "--log-format", "text"}, admin...)...)
			}
		}
	}
	if doc.hasVolume("b") {
		t.Errorf("volume b was registered during the attack")
	}
	if _, err := os.Stat(nd.volumeDir("b")); err == nil {
		t.Errorf("the intermediate has a volume b")
	}
	tlsWait(t, addrs, admin)
	doc = pollTLSStatus(t, pairTimeout, "the secondary of a in PAIR", addrs, admin, func(d tlsStatusDoc, _ int) bool {
		_, _, st := d.volumeState("a", tg.secondary)
		return st == "PAIR"
	})
	if _, epoch, _ := doc.volumeState("a", tg.secondary); epoch != 1 {
		t.Errorf("volume a at epoch %d after the attack, want 1 (no promotion)", epoch)
	}

	// The secondary holds exactly what the writer wrote, and its replica is
	// clean (the admin API's fsck, asked with the admin certificate).
	want := map[string][]byte{}
	for _, f := range w.acked {
		want[f.name] = fileData(seed, f.name, f.size)
	}
	sameTree(t, "the primary's files", readTree(t, dir), want)
	sameTree(t, "the secondary's files", readTree(t, filepath.Join(sec.mnt, "w")), want)
	ans := adminCall(context.Background(), adminClient(pki.material(t, "admin").ClientConfig(auth.RoleSecondary)), true, http.MethodGet, sec.listen, "/v1/fsck", nil)
	if ans.err != nil || ans.code != http.StatusOK || !strings.Contains(ans.body, `"clean": true`) {
		t.Errorf("fsck of the replica through the admin API with the admin certificate: %v", ans)
	}

	// Volume z, if the attacker created it, holds none of a's data.
	if doc.hasVolume("z") {
		var zdata []byte
		err := filepath.WalkDir(nd.volumeDir("z"), func(p string, d os.DirEntry, err error) error {
			if err != nil || !d.Type().IsRegular() {
				return err
			}
			b, err := dataRegions(p, 512<<20)
			zdata = append(zdata, b...)
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		for name, data := range want {
			if len(data) >= 64 && bytes.Contains(zdata, data[:64]) {
				t.Errorf("volume z holds data of file %s of volume a", name)
			}
		}
		t.Logf("volume z, created by the attacker, holds %d bytes of data and none of a's files", len(zdata))
	}

	// The refusals are logged and counted; nothing panicked.
	logs := map[string]string{"intermediate": nd.p.stderr.String(), "primary": pm.stderr.String(), "secondary": sm.stderr.String()}
	for name, l := range logs {
		for _, bad := range []string{"panic", "fatal", "goroutine "} {
			if lines := logLines(strings.ToLower(l), bad); len(lines) > 0 {
				t.Errorf("the %s's log has %d lines with %q, e.g. %s", name, len(lines), bad, lines[0])
			}
		}
	}
	for _, want := range [][]string{
		{"refused a call", "attacker"},
		{"refused a connection at its TLS handshake", "tls_handshake"},
		{"refused a connection at its TLS handshake", "raft_handshake"},
	} {
		if lines := logLines(logs["intermediate"], want...); len(lines) == 0 {
			t.Errorf("the intermediate logged no line with %q", want)
		} else {
			t.Logf("the intermediate logged %d lines like %s", len(lines), lines[0])
		}
	}
	if lines := logLines(logs["secondary"], "refused an admin API request", "attacker"); len(lines) == 0 {
		t.Errorf("the secondary logged no refused admin API request of the attacker")
	}
	m := mustScrape(t, nodeMetrics[0])
	if v, _ := sumSeries(m, "tricopy_intermediate_auth_refused_total"); v == 0 {
		t.Errorf("tricopy_intermediate_auth_refused_total is 0")
	} else {
		t.Logf("tricopy_intermediate_auth_refused_total: %v", v)
	}
	if v, _ := sumSeries(mustScrape(t, secMetrics), "tricopy_secondary_auth_refused_total"); v == 0 {
		t.Errorf("tricopy_secondary_auth_refused_total is 0")
	}

	// Byte for byte: the intermediate's volume a and the secondary's
	// replica equal the primary's volume, which is clean.
	pm.stop(t)
	tlsWait(t, addrs, admin)
	sm.stop(t)
	nd.stop(t)
	fsckClean(t, prim.data)
	compareVolumes(t, prim.data, nd.volumeDir("a"))
	compareVolumes(t, prim.data, filepath.Join(sec.data, "replica"))
	t.Logf("done in %v", time.Since(start).Round(time.Millisecond))
}
