package mirror_test

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/tricopy/tricopy/blockdev/mirror"
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
			v := m.GetGauge().GetValue()
			if m.GetCounter() != nil {
				v = m.GetCounter().GetValue()
			}
			out[mf.GetName()+"{"+strings.Join(labels, ",")+"}"] = v
		}
	}
	return out
}

// TestCollector registers the collectors of two mirrors, of volumes a and
// b, on one registry and checks what they report against Status; then one
// is unregistered alone.
func TestCollector(t *testing.T) {
	in, pa := newPaired(t, 256, nil)
	pb := newPrimaryNamed(t, in, "b", 256, nil)
	pb.mustOpen()
	pb.waitState(mirror.StatePair)
	for tag := range 5 {
		if err := pa.commit(tag, uint64(tag)); err != nil {
			t.Fatal(err)
		}
	}
	if err := pb.commit(9, 9); err != nil {
		t.Fatal(err)
	}
	for _, p := range []*primary{pa, pb} {
		waitFor(t, 10*time.Second, "the pending batches of "+p.name+" to be applied", func() bool { return p.m.Status().PendingBatches == 0 })
	}

	reg := prometheus.NewPedanticRegistry()
	ca, cb := mirror.NewCollector(pa.m, "a"), mirror.NewCollector(pb.m, "b")
	if err := reg.Register(ca); err != nil {
		t.Fatalf("register a: %v", err)
	}
	if err := reg.Register(cb); err != nil {
		t.Fatalf("register b: %v", err)
	}
	if err := reg.Register(mirror.NewCollector(pa.m, "a")); err == nil {
		t.Error("a second collector of volume a registered")
	}
	if n := testutil.CollectAndCount(ca); n != 14 {
		t.Errorf("collector of a: %d series, want 14 (5 states and 9 others)", n)
	}
	if problems, err := testutil.CollectAndLint(ca); err != nil || len(problems) > 0 {
		t.Errorf("lint: %v %v", problems, err)
	}

	got := series(t, reg)
	for _, p := range []*primary{pa, pb} {
		st := p.m.Status()
		if st.AppliedSeq == 0 || st.AppliedVolumeSeq == 0 {
			t.Fatalf("status of %s: %+v, want batches applied", p.name, st)
		}
		vol := fmt.Sprintf("volume=%q", p.name)
		want := map[string]float64{
			"tricopy_mirror_epoch{" + vol + "}":                float64(st.Epoch),
			"tricopy_mirror_dirty_regions{" + vol + "}":        0,
			"tricopy_mirror_resync_done_regions{" + vol + "}":  0,
			"tricopy_mirror_resync_total_regions{" + vol + "}": 0,
			"tricopy_mirror_copied_bytes_total{" + vol + "}":   float64(st.CopiedBytes),
			"tricopy_mirror_pending_batches{" + vol + "}":      0,
			"tricopy_mirror_applied_seq{" + vol + "}":          float64(st.AppliedSeq),
			"tricopy_mirror_applied_volume_seq{" + vol + "}":   float64(st.AppliedVolumeSeq),
			"tricopy_mirror_detached{" + vol + "}":             0,
		}
		for _, s := range []mirror.State{mirror.StateCopy, mirror.StatePair, mirror.StateSusp, mirror.StateResync, mirror.StateFenced} {
			v := 0.0
			if s == mirror.StatePair {
				v = 1
			}
			want[fmt.Sprintf("tricopy_mirror_state{state=%q,%s}", s, vol)] = v
		}
		for k, v := range want {
			if g, ok := got[k]; !ok || g != v {
				t.Errorf("%s = %v (present %v), want %v", k, g, ok, v)
			}
		}
	}
	if got[`tricopy_mirror_applied_volume_seq{volume="a"}`] != 5 {
		t.Errorf("volume seq of a: %v, want 5", got[`tricopy_mirror_applied_volume_seq{volume="a"}`])
	}

	if !reg.Unregister(ca) {
		t.Fatal("unregister a: not registered")
	}
	got = series(t, reg)
	if _, ok := got[`tricopy_mirror_epoch{volume="a"}`]; ok {
		t.Error("volume a still reported after unregistering its collector")
	}
	if _, ok := got[`tricopy_mirror_epoch{volume="b"}`]; !ok {
		t.Error("volume b no longer reported after unregistering a's collector")
	}
}
