package intermediate_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/tricopy/tricopy/intermediate"
	"github.com/tricopy/tricopy/intermediate/wire"
)

// gathered returns the value of the series name{labels} (label name, value
// pairs) in reg: a gauge's or a counter's value, a histogram's sample
// count. ok is false when reg has no such series.
func gathered(t testing.TB, reg prometheus.Gatherer, name string, labels ...string) (v float64, ok bool) {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	series:
		for _, m := range mf.GetMetric() {
			have := map[string]string{}
			for _, lp := range m.GetLabel() {
				have[lp.GetName()] = lp.GetValue()
			}
			for i := 0; i+1 < len(labels); i += 2 {
				if have[labels[i]] != labels[i+1] {
					continue series
				}
			}
			switch {
			case m.GetGauge() != nil:
				return m.GetGauge().GetValue(), true
			case m.GetCounter() != nil:
				return m.GetCounter().GetValue(), true
			case m.GetHistogram() != nil:
				return float64(m.GetHistogram().GetSampleCount()), true
			}
		}
	}
	return 0, false
}

// mustGathered is gathered that fails the test when the series is missing.
func mustGathered(t testing.TB, reg prometheus.Gatherer, name string, labels ...string) float64 {
	t.Helper()
	v, ok := gathered(t, reg, name, labels...)
	if !ok {
		t.Fatalf("no series %s%v in the registry", name, labels)
	}
	return v
}

// TestMetricsOneNode: a node opened with a registry exports its state, the
// batches it committed, the Submit latency and the refusals; the metrics
// pass the Prometheus linter; Close unregisters them, and the node opened
// again on the same registry registers them again.
func TestMetricsOneNode(t *testing.T) {
	reg := prometheus.NewRegistry()
	c := newTestCluster(t, 1, func(cfg *intermediate.Config) { cfg.Metrics = reg })
	c.startAll()
	tn := c.leader(15 * time.Second)

	cl := newTestClient(t, c.addrs())
	vol := openTestVolume(t, cl, "a")
	const batches = 5
	last := submitN(t, vol, batches)

	want := fmt.Sprintf(`
# HELP tricopy_intermediate_committed_seq Seq of the last batch committed in the group, as this node's state machine applied it.
# TYPE tricopy_intermediate_committed_seq gauge
tricopy_intermediate_committed_seq %d
# HELP tricopy_intermediate_leader 1 when this node is the Raft leader, 0 otherwise.
# TYPE tricopy_intermediate_leader gauge
tricopy_intermediate_leader 1
# HELP tricopy_intermediate_raft_state 1 for this node's current Raft state, 0 for the other states.
# TYPE tricopy_intermediate_raft_state gauge
tricopy_intermediate_raft_state{state="Candidate"} 0
tricopy_intermediate_raft_state{state="Follower"} 0
tricopy_intermediate_raft_state{state="Leader"} 1
tricopy_intermediate_raft_state{state="Shutdown"} 0
# HELP tricopy_intermediate_failed 1 when the state machine stopped applying after a fatal error (the node must be restarted), 0 otherwise.
# TYPE tricopy_intermediate_failed gauge
tricopy_intermediate_failed 0
`, last)
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want),
		"tricopy_intermediate_committed_seq", "tricopy_intermediate_leader", "tricopy_intermediate_raft_state", "tricopy_intermediate_failed"); err != nil {
		t.Error(err)
	}
	for _, c := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"tricopy_intermediate_batches_committed_total", []string{"volume", "a"}, batches},
		{"tricopy_intermediate_bytes_committed_total", []string{"volume", "a"}, batches * wire.BlockSize},
		{"tricopy_intermediate_volume_committed_seq", []string{"volume", "a"}, float64(last)},
		{"tricopy_intermediate_volume_epoch", []string{"volume", "a"}, 1},
		{"tricopy_intermediate_volume_primary_connected", []string{"volume", "a"}, 1},
		{"tricopy_intermediate_journal_budget_bytes", nil, intermediate.DefaultJournalBudget},
	} {
		if got := mustGathered(t, reg, c.name, c.labels...); got != c.want {
			t.Errorf("%s%v = %v, want %v", c.name, c.labels, got, c.want)
		}
	}
	// The ack reaches the client before the handler observes its latency.
	waitFor(t, 10*time.Second, "submit_seconds to count every batch", func() bool {
		return mustGathered(t, reg, "tricopy_intermediate_submit_seconds") == batches
	})
	if got := mustGathered(t, reg, "tricopy_intermediate_journal_batches"); got != batches {
		t.Errorf("journal_batches = %v, want %d", got, batches)
	}

	// An open at another epoch than the volume's is refused: stale_epoch.
	if _, ok := gathered(t, reg, "tricopy_intermediate_refusals_total", "code", "stale_epoch"); ok {
		t.Fatal("refusals_total{code=stale_epoch} before any refusal")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	s, err := rawClient(t, tn.clientAddr, 1<<20).Submit(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Send(&wire.SubmitRequest{Msg: &wire.SubmitRequest_Open{Open: &wire.SubmitOpen{Volume: "a", Epoch: 7, BlockCount: 16}}}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Recv(); !errors.Is(wire.FromStatus(err), wire.ErrStaleEpoch) {
		t.Fatalf("open at epoch 7: %v, want %v", wire.FromStatus(err), wire.ErrStaleEpoch)
	}
	waitFor(t, 10*time.Second, "refusals_total{code=stale_epoch} = 1", func() bool {
		v, _ := gathered(t, reg, "tricopy_intermediate_refusals_total", "code", "stale_epoch")
		return v == 1
	})

	if problems, err := testutil.GatherAndLint(reg); err != nil {
		t.Fatal(err)
	} else {
		for _, p := range problems {
			t.Errorf("lint %s: %s", p.Metric, p.Text)
		}
	}

	vol.Close()
	c.stop(tn)
	if n, err := testutil.GatherAndCount(reg); err != nil || n != 0 {
		t.Fatalf("after Close the registry holds %d series (err %v), want none", n, err)
	}

	// Opened again, the node registers its metrics again; its counter of
	// committed batches counts the log it replays.
	c.start(tn)
	c.leader(15 * time.Second)
	waitFor(t, 15*time.Second, "the replayed batches counted", func() bool {
		v, _ := gathered(t, reg, "tricopy_intermediate_batches_committed_total", "volume", "a")
		return v == batches
	})
	if got := mustGathered(t, reg, "tricopy_intermediate_committed_seq"); got != float64(last) {
		t.Errorf("committed_seq after reopening = %v, want %d", got, last)
	}
}

// TestMetricsRegistrationConflict: a node whose metrics cannot be
// registered (another node's are on the registry) fails Open, and leaves
// the other node's metrics registered.
func TestMetricsRegistrationConflict(t *testing.T) {
	reg := prometheus.NewRegistry()
	c1 := newTestCluster(t, 1, func(cfg *intermediate.Config) { cfg.Metrics = reg })
	c1.startAll()
	c1.leader(15 * time.Second)

	c2 := newTestCluster(t, 1, func(cfg *intermediate.Config) { cfg.Metrics = reg })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	n, err := intermediate.Open(ctx, c2.config(c2.nodes[0]))
	if err == nil {
		n.Close()
		t.Fatal("Open with metrics already on the registry succeeded")
	}
	var are prometheus.AlreadyRegisteredError
	if !errors.As(err, &are) || !strings.Contains(err.Error(), "register metrics") {
		t.Fatalf("Open: %v, want an error wrapping prometheus.AlreadyRegisteredError", err)
	}
	if got := mustGathered(t, reg, "tricopy_intermediate_leader"); got != 1 {
		t.Errorf("first node's leader gauge = %v after the failed Open, want 1", got)
	}
}
