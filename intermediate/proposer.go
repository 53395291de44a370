package intermediate

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"

	"github.com/tricopy/tricopy/intermediate/wire"
)

// proposal is a run of batches of one Submit stream, in volume-seq order,
// waiting to enter the Raft log.
type proposal struct {
	batches []*wire.Batch
	session uint64 // the stream's Submit session (see wire.SubmitEntry)
	bytes   int
	// done receives one result per batch, or err when the entry did not
	// commit. It is called on the completer goroutine, in log order, and
	// must not block.
	done func(results []BatchResult, err error)
}

// inflight is one Raft entry in the pipeline with the proposals it carries.
type inflight struct {
	future    raft.ApplyFuture
	proposals []*proposal
	bytes     int
	start     time.Time
}

// proposer is the server's half of group commit: it turns the batches of all
// Submit streams that are ready at the same time into one Raft entry (one
// log write and one fsync for many writers), and keeps up to PipelineDepth
// entries in flight. While the pipeline is full, arriving batches queue and
// go out together in the next entry.
//
// Goroutines: run (encodes and proposes) and complete (waits for entries in
// log order and hands results back). stop cancels both and fails what is
// queued; wait returns when both are done.
type proposer struct {
	n        *Node
	mu       sync.Mutex
	queue    []*proposal
	wake     chan struct{}
	pipeline chan *inflight
	pending  atomic.Int64 // payload bytes queued or in flight
	entries  atomic.Uint64
	batches  atomic.Uint64
	commitNs atomic.Uint64 // total time from raft.Apply to the entry's result
	ctx      context.Context
	cancel   context.CancelFunc
	wg       sync.WaitGroup
	stopped  bool
	// raftDown is closed once Raft has shut down: an entry still
	// unresolved then never will be (hashicorp/raft drops the futures of
	// entries committed but not yet handed to the FSM when it shuts down).
	raftDown chan struct{}
}

func newProposer(n *Node) *proposer {
	p := &proposer{
		n:        n,
		wake:     make(chan struct{}, 1),
		pipeline: make(chan *inflight, n.cfg.PipelineDepth),
		raftDown: make(chan struct{}),
	}
	p.ctx, p.cancel = context.WithCancel(context.Background())
	return p
}

func (p *proposer) start() {
	p.wg.Add(2)
	go p.run()
	go p.complete()
}

// stop refuses new proposals and fails queued ones; entries already in Raft
// complete when Raft resolves them (at the latest when it shuts down).
func (p *proposer) stop() {
	p.mu.Lock()
	p.stopped = true
	queued := p.queue
	p.queue = nil
	p.mu.Unlock()
	p.cancel()
	for _, pr := range queued {
		p.pending.Add(-int64(pr.bytes))
		pr.done(nil, wire.Errorf(wire.ErrorCode_ERROR_CODE_NOT_LEADER, "node %s is shutting down", p.n.cfg.ID))
	}
}

// raftStopped tells the proposer that Raft has shut down, so that complete
// stops waiting for entries Raft will never resolve.
func (p *proposer) raftStopped() { close(p.raftDown) }

// wait returns once run and complete have returned.
func (p *proposer) wait() { p.wg.Wait() }

// pendingBytes returns the payload bytes queued or in flight.
func (p *proposer) pendingBytes() uint64 { return uint64(max(p.pending.Load(), 0)) }

// submit queues pr. It fails when the proposer has stopped.
func (p *proposer) submit(pr *proposal) error {
	p.mu.Lock()
	if p.stopped {
		p.mu.Unlock()
		return wire.Errorf(wire.ErrorCode_ERROR_CODE_NOT_LEADER, "node %s is shutting down", p.n.cfg.ID)
	}
	p.queue = append(p.queue, pr)
	p.pending.Add(int64(pr.bytes))
	p.mu.Unlock()
	select {
	case p.wake <- struct{}{}:
	default:
	}
	return nil
}

// take removes from the queue the proposals that fit in one entry: at least
// one, then as many as stay under the message limit.
func (p *proposer) take() []*proposal {
	p.mu.Lock()
	defer p.mu.Unlock()
	limit := p.n.cfg.MaxMessage - 64<<10
	size, i := 0, 0
	for i < len(p.queue) {
		s := p.queue[i].bytes + 128*len(p.queue[i].batches)
		if i > 0 && size+s > limit {
			break
		}
		size += s
		i++
	}
	out := p.queue[:i:i]
	p.queue = p.queue[i:]
	if len(p.queue) == 0 {
		p.queue = nil
	}
	return out
}

func (p *proposer) run() {
	defer p.wg.Done()
	defer close(p.pipeline)
	for {
		select {
		case <-p.ctx.Done():
			return
		case <-p.wake:
		}
		for {
			props := p.take()
			if len(props) == 0 {
				break
			}
			fl := p.propose(props)
			if fl == nil {
				continue
			}
			select {
			case p.pipeline <- fl:
			case <-p.ctx.Done():
				// Raft resolves the future when it shuts down; complete
				// it here so nobody waits forever.
				p.finish(fl)
				return
			}
		}
	}
}

// propose encodes one entry of props and hands it to Raft. It returns nil
// when the entry could not be made (the proposals are failed).
func (p *proposer) propose(props []*proposal) *inflight {
	var batches []*wire.Batch
	var sessions []uint64
	bytes := 0
	for _, pr := range props {
		batches = append(batches, pr.batches...)
		for range pr.batches {
			sessions = append(sessions, pr.session)
		}
		bytes += pr.bytes
	}
	data, err := wire.EncodeEntry(&wire.Entry{Op: &wire.Entry_Submit{Submit: &wire.SubmitEntry{Batches: batches, Sessions: sessions}}})
	if err == nil && len(data) > p.n.cfg.MaxMessage {
		err = wire.Errorf(wire.ErrorCode_ERROR_CODE_TOO_LARGE, "raft entry of %d bytes over the limit of %d", len(data), p.n.cfg.MaxMessage)
	}
	if err != nil {
		p.fail(props, bytes, err)
		return nil
	}
	p.entries.Add(1)
	p.batches.Add(uint64(len(batches)))
	return &inflight{future: p.n.raft.Apply(data, p.n.cfg.ApplyTimeout), proposals: props, bytes: bytes, start: time.Now()}
}

func (p *proposer) fail(props []*proposal, bytes int, err error) {
	p.pending.Add(-int64(bytes))
	for _, pr := range props {
		pr.done(nil, err)
	}
}

func (p *proposer) complete() {
	defer p.wg.Done()
	for fl := range p.pipeline {
		p.finish(fl)
	}
}

// finish waits for one entry and hands each proposal its results. An entry
// still unresolved when Raft has shut down fails its proposals as from a
// node shutting down (the batches may or may not have committed: the
// clients' exactly-once retries find out); the goroutine waiting on its
// future is then left blocked, as Raft never resolves it.
func (p *proposer) finish(fl *inflight) {
	done := make(chan error, 1)
	go func() { done <- fl.future.Error() }()
	var err error
	select {
	case err = <-done:
	case <-p.raftDown:
		select {
		case err = <-done:
		default:
			p.fail(fl.proposals, fl.bytes, p.n.raftError(raft.ErrRaftShutdown))
			return
		}
	}
	p.commitNs.Add(uint64(time.Since(fl.start)))
	if err != nil {
		p.fail(fl.proposals, fl.bytes, p.n.raftError(err))
		return
	}
	var res *SubmitResult
	switch r := fl.future.Response().(type) {
	case *SubmitResult:
		res = r
	case error:
		p.fail(fl.proposals, fl.bytes, r)
		return
	default:
		p.fail(fl.proposals, fl.bytes, fmt.Errorf("submit entry: unexpected state machine response %T", r))
		return
	}
	want := 0
	for _, pr := range fl.proposals {
		want += len(pr.batches)
	}
	if len(res.Batches) != want {
		p.fail(fl.proposals, fl.bytes, fmt.Errorf("submit entry: %d results for %d batches", len(res.Batches), want))
		return
	}
	p.pending.Add(-int64(fl.bytes))
	off := 0
	for _, pr := range fl.proposals {
		pr.done(res.Batches[off:off+len(pr.batches)], nil)
		off += len(pr.batches)
	}
}
