package secondary_test

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/tricopy/tricopy/secondary"
)

// series gathers reg and returns every sample by its series name, as the
// text format writes it: name{label="value",...} with the labels sorted.
func series(t testing.TB, reg prometheus.Gatherer) map[string]float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			var labels []string
			for _, l := range m.GetLabel() {
				labels = append(labels, fmt.Sprintf("%s=%q", l.GetName(), l.GetValue()))
			}
			slices.Sort(labels)
			out[mf.GetName()+"{"+strings.Join(labels, ",")+"}"] = m.GetGauge().GetValue()
		}
	}
	return out
}

// TestCollector registers the collectors of two secondaries, of volumes a
// and b, on one registry and checks what they report against Status; then
// one is unregistered alone.
func TestCollector(t *testing.T) {
	n, addr := startNode(t)
	cl := newClient(t, addr)
	rng := rand.New(rand.NewPCG(5, 6))
	va, vb := openVolume(t, cl, "a"), openVolume(t, cl, "b")
	sa, sb := openSecondary(t, cl, t.TempDir(), "a"), openSecondary(t, cl, t.TempDir(), "b")
	defer sa.Close()
	defer sb.Close()
	submitRandom(t, va, rng, 10)
	last := submitRandom(t, vb, rng, 10)
	waitApplied(t, sa, last)
	waitApplied(t, sb, last)
	waitUntil(t, 10*time.Second, "both secondaries quiet at the validated point, knowing each other", func() bool {
		v := n.FSM().Validated()
		for _, s := range []*secondary.Secondary{sa, sb} {
			st := s.Status()
			if st.AppliedSeq != v || st.ValidatedSeq != 0 || !st.Connected || len(st.Peers) != 2 || st.FetchedSeq < v {
				return false
			}
		}
		return true
	})

	reg := prometheus.NewPedanticRegistry()
	ca, cb := secondary.NewCollector(sa), secondary.NewCollector(sb)
	if err := reg.Register(ca); err != nil {
		t.Fatalf("register a: %v", err)
	}
	if err := reg.Register(cb); err != nil {
		t.Fatalf("register b: %v", err)
	}
	if err := reg.Register(secondary.NewCollector(sa)); err == nil {
		t.Error("a second collector of secondary a registered")
	}
	if n := testutil.CollectAndCount(ca); n != 15 {
		t.Errorf("collector of a: %d series, want 15 (6 states and 9 others)", n)
	}
	if problems, err := testutil.CollectAndLint(ca); err != nil || len(problems) > 0 {
		t.Errorf("lint: %v %v", problems, err)
	}

	got := series(t, reg)
	for _, s := range []*secondary.Secondary{sa, sb} {
		st := s.Status()
		l := fmt.Sprintf("secondary=%q,volume=%q", st.ID, st.Volume)
		want := map[string]float64{
			"tricopy_secondary_applied_seq{" + l + "}":   float64(st.AppliedSeq),
			"tricopy_secondary_durable_seq{" + l + "}":   float64(st.DurableSeq),
			"tricopy_secondary_fetched_seq{" + l + "}":   float64(st.FetchedSeq),
			"tricopy_secondary_validated_seq{" + l + "}": 0,
			"tricopy_secondary_epoch{" + l + "}":         1,
			"tricopy_secondary_connected{" + l + "}":     1,
			"tricopy_secondary_promoted{" + l + "}":      0,
			"tricopy_secondary_peers{" + l + "}":         2,
		}
		for _, state := range []string{secondary.StatePair, secondary.StateCopy, secondary.StateResync,
			secondary.StateFailed, secondary.StatePromoted, secondary.StateFailback} {
			v := 0.0
			if state == secondary.StatePair {
				v = 1
			}
			want[fmt.Sprintf("tricopy_secondary_state{%s,state=%q,volume=%q}", fmt.Sprintf("secondary=%q", st.ID), state, st.Volume)] = v
		}
		for k, v := range want {
			if g, ok := got[k]; !ok || g != v {
				t.Errorf("%s = %v (present %v), want %v", k, g, ok, v)
			}
		}
		if got["tricopy_secondary_applied_seq{"+l+"}"] != float64(n.FSM().Validated()) {
			t.Errorf("applied seq of %s: %v, want the validated point %d", st.Volume, got["tricopy_secondary_applied_seq{"+l+"}"], n.FSM().Validated())
		}
	}

	if !reg.Unregister(ca) {
		t.Fatal("unregister a: not registered")
	}
	got = series(t, reg)
	if _, ok := got[`tricopy_secondary_epoch{secondary="a",volume="a"}`]; ok {
		t.Error("secondary a still reported after unregistering its collector")
	}
	if _, ok := got[`tricopy_secondary_epoch{secondary="b",volume="b"}`]; !ok {
		t.Error("secondary b no longer reported after unregistering a's collector")
	}
}
