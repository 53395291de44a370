package intermediate

import (
	"errors"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/tricopy/tricopy/intermediate/wire"
)

// strandedFuture is a Raft future that never resolves, as hashicorp/raft
// leaves an entry it committed but had not handed to the FSM when it shut
// down.
type strandedFuture struct{ raft.ApplyFuture }

func (strandedFuture) Error() error { select {} }

// TestProposerRaftDown: once Raft has shut down, the completer fails an
// entry Raft never resolves instead of waiting for it forever (a node's
// Close hung on such an entry under load).
func TestProposerRaftDown(t *testing.T) {
	n := &Node{cfg: Config{ID: "i1", PipelineDepth: 2}}
	p := newProposer(n)
	p.wg.Add(1)
	go p.complete()
	got := make(chan error, 1)
	p.pipeline <- &inflight{future: strandedFuture{}, proposals: []*proposal{{
		batches: []*wire.Batch{{Volume: "a"}},
		done:    func(_ []BatchResult, err error) { got <- err },
	}}}
	select {
	case err := <-got:
		t.Fatalf("the entry finished before Raft shut down: %v", err)
	case <-time.After(100 * time.Millisecond):
	}
	p.raftStopped()
	select {
	case err := <-got:
		var we *wire.Error
		if !errors.As(err, &we) || we.Code != wire.ErrorCode_ERROR_CODE_NOT_LEADER {
			t.Fatalf("stranded entry failed with %v, want NOT_LEADER (shutting down)", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the completer still waits for an entry Raft will never resolve")
	}
	close(p.pipeline)
	p.wait()
}
