package coord

import (
	"fmt"
	"slices"
	"testing"
)

// expect steps c with ev and checks the actions, in order.
func expect(t *testing.T, c *Coordinator, ev Event, want ...Action) {
	t.Helper()
	got := c.Step(ev)
	if !slices.Equal(got, want) {
		t.Fatalf("Step(%T%+v):\n got  %v\n want %v", ev, ev, got, want)
	}
}

func newTest(t *testing.T, recorded uint64, ids ...string) *Coordinator {
	t.Helper()
	return New(Config{Secondaries: ids, RetransmitTicks: 2}, recorded)
}

func TestHappyPath(t *testing.T) {
	c := newTest(t, 0, "a", "b")
	expect(t, c, Tick{})
	expect(t, c, Valid{Seq: 5}, SendPrepare{"a", 5}, SendPrepare{"b", 5})
	expect(t, c, Prepared{From: "a", N: 5})
	if got := c.HeldBackBy(); got != "b" {
		t.Fatalf("HeldBackBy = %q, want b", got)
	}
	expect(t, c, Prepared{From: "b", N: 5}, Record{5})
	if c.Recording() != 5 || c.Recorded() != 0 {
		t.Fatalf("recording %d recorded %d", c.Recording(), c.Recorded())
	}
	expect(t, c, Recorded{N: 5}, SendValidate{"a", 5}, SendValidate{"b", 5})
	expect(t, c, Applied{From: "a", N: 5})
	expect(t, c, Applied{From: "b", N: 5})
	for range 5 {
		expect(t, c, Tick{}) // nothing left to send
	}
	if c.MinApplied() != 5 || c.HeldBackBy() != "" || c.Recorded() != 5 {
		t.Fatalf("MinApplied %d HeldBackBy %q Recorded %d", c.MinApplied(), c.HeldBackBy(), c.Recorded())
	}
}

func TestRetransmitAfterDrops(t *testing.T) {
	c := newTest(t, 0, "a", "b")
	expect(t, c, Valid{Seq: 3}, SendPrepare{"a", 3}, SendPrepare{"b", 3}) // both dropped
	expect(t, c, Tick{})
	expect(t, c, Tick{}, SendPrepare{"a", 3}, SendPrepare{"b", 3})
	expect(t, c, Prepared{From: "a", N: 3})
	expect(t, c, Tick{})
	expect(t, c, Tick{}, SendPrepare{"b", 3}) // only the one that did not answer
	expect(t, c, Prepared{From: "b", N: 3}, Record{3})
	expect(t, c, Tick{}) // a Record is the driver's to retry, not ours
	expect(t, c, Recorded{N: 3}, SendValidate{"a", 3}, SendValidate{"b", 3})
	expect(t, c, Applied{From: "b", N: 3})
	expect(t, c, Tick{})
	expect(t, c, Tick{}, SendValidate{"a", 3})
	expect(t, c, Applied{From: "a", N: 3})
	expect(t, c, Tick{})
	expect(t, c, Tick{})
}

func TestDuplicatesAndReorderingIgnored(t *testing.T) {
	c := newTest(t, 0, "a", "b")
	expect(t, c, Valid{Seq: 4}, SendPrepare{"a", 4}, SendPrepare{"b", 4})
	expect(t, c, Valid{Seq: 2}) // late, lower: ignored
	expect(t, c, Prepared{From: "a", N: 4})
	expect(t, c, Prepared{From: "a", N: 2}) // reordered partial report
	expect(t, c, Prepared{From: "a", N: 4})
	expect(t, c, Prepared{From: "b", N: 4}, Record{4})
	expect(t, c, Prepared{From: "b", N: 4}) // duplicate: no second Record
	expect(t, c, Recorded{N: 4}, SendValidate{"a", 4}, SendValidate{"b", 4})
	expect(t, c, Recorded{N: 4})
	expect(t, c, Recorded{N: 2}) // an old Record applied late
	expect(t, c, Applied{From: "a", N: 4})
	expect(t, c, Applied{From: "a", N: 1})
	expect(t, c, Prepared{From: "zz", N: 9}) // unknown secondary
	if got, _ := c.Applied("a"); got != 4 {
		t.Fatalf("Applied(a) = %d", got)
	}
	if _, ok := c.Prepared("zz"); ok {
		t.Fatal("Prepared(zz) known")
	}
	if c.Recorded() != 4 {
		t.Fatalf("Recorded = %d", c.Recorded())
	}
}

func TestPipelinedRounds(t *testing.T) {
	c := newTest(t, 0, "a", "b")
	expect(t, c, Valid{Seq: 3}, SendPrepare{"a", 3}, SendPrepare{"b", 3})
	expect(t, c, Valid{Seq: 7}) // round 3 still open
	expect(t, c, Prepared{From: "a", N: 3})
	// Round 3 closes: it is recorded and round 7 opens at once.
	expect(t, c, Prepared{From: "b", N: 3}, Record{3}, SendPrepare{"a", 7}, SendPrepare{"b", 7})
	expect(t, c, Prepared{From: "a", N: 7})
	expect(t, c, Prepared{From: "b", N: 7}) // Record 3 in flight: wait
	expect(t, c, Recorded{N: 3}, SendValidate{"a", 3}, SendValidate{"b", 3}, Record{7})
	// Secondaries still apply 3 while 7 is recorded and validated.
	expect(t, c, Recorded{N: 7}, SendValidate{"a", 7}, SendValidate{"b", 7})
	expect(t, c, Applied{From: "a", N: 3})
	expect(t, c, Applied{From: "a", N: 7})
	expect(t, c, Tick{})
	expect(t, c, Tick{}, SendValidate{"b", 7})
}

func TestPartialProgressRecorded(t *testing.T) {
	c := newTest(t, 0, "a", "b")
	expect(t, c, Valid{Seq: 10}, SendPrepare{"a", 10}, SendPrepare{"b", 10})
	expect(t, c, Prepared{From: "a", N: 10})
	expect(t, c, Prepared{From: "b", N: 6}, Record{6})
	expect(t, c, Recorded{N: 6}, SendValidate{"a", 6}, SendValidate{"b", 6})
	expect(t, c, Prepared{From: "b", N: 10}, Record{10})
}

func TestFollowerBehindHoldsValidatedPoint(t *testing.T) {
	c := newTest(t, 0, "a", "b", "c")
	expect(t, c, Valid{Seq: 8}, SendPrepare{"a", 8}, SendPrepare{"b", 8}, SendPrepare{"c", 8})
	expect(t, c, Prepared{From: "a", N: 8})
	expect(t, c, Prepared{From: "c", N: 8})
	expect(t, c, Prepared{From: "b", N: 2}, Record{2})
	expect(t, c, Recorded{N: 2}, SendValidate{"a", 2}, SendValidate{"b", 2}, SendValidate{"c", 2})
	if got := c.HeldBackBy(); got != "b" {
		t.Fatalf("HeldBackBy = %q, want b", got)
	}
	if p, _ := c.Prepared("b"); p != 2 {
		t.Fatalf("Prepared(b) = %d", p)
	}
	// However long b lags, nothing above what b prepared is recorded.
	for range 10 {
		for _, a := range c.Step(Tick{}) {
			if r, ok := a.(Record); ok {
				t.Fatalf("%v while b prepared 2", r)
			}
		}
	}
	expect(t, c, Prepared{From: "b", N: 8}, Record{8})
}

func TestHelloMidRound(t *testing.T) {
	c := newTest(t, 0, "a", "b")
	expect(t, c, Valid{Seq: 5}, SendPrepare{"a", 5}, SendPrepare{"b", 5})
	expect(t, c, Prepared{From: "a", N: 5})
	expect(t, c, Prepared{From: "b", N: 5}, Record{5})
	expect(t, c, Recorded{N: 5}, SendValidate{"a", 5}, SendValidate{"b", 5})
	expect(t, c, Valid{Seq: 9}, SendPrepare{"a", 9}, SendPrepare{"b", 9})
	// b restarts: it lost the VALIDATE(5) and the PREPARE(9); it greets
	// with what it holds and is sent both again at once.
	expect(t, c, Hello{From: "b", Applied: 0, Durable: 6}, SendPrepare{"b", 9}, SendValidate{"b", 5})
	if p, _ := c.Prepared("b"); p != 6 {
		t.Fatalf("Prepared(b) after Hello = %d, want 6", p)
	}
	// What b holds already moves the validated point.
	expect(t, c, Prepared{From: "a", N: 9}, Record{6})
	// A Hello carrying everything is an answer to both.
	expect(t, c, Hello{From: "b", Applied: 5, Durable: 9})
	expect(t, c, Recorded{N: 6}, SendValidate{"a", 6}, SendValidate{"b", 6}, Record{9})
}

func TestNewCoordinatorResumesFromRecorded(t *testing.T) {
	c := newTest(t, 5, "a", "b")
	if c.Recorded() != 5 || c.Target() != 5 {
		t.Fatalf("Recorded %d Target %d", c.Recorded(), c.Target())
	}
	// It knows nothing of who applied what: VALIDATE(recorded) to all.
	expect(t, c, Tick{}, SendValidate{"a", 5}, SendValidate{"b", 5})
	expect(t, c, Valid{Seq: 5}) // nothing new to prepare
	expect(t, c, Applied{From: "a", N: 5})
	expect(t, c, Valid{Seq: 7}, SendPrepare{"a", 7}, SendPrepare{"b", 7})
	// Reports below the recorded point record nothing.
	expect(t, c, Prepared{From: "a", N: 3})
	expect(t, c, Prepared{From: "b", N: 4})
	expect(t, c, Prepared{From: "a", N: 7})
	expect(t, c, Prepared{From: "b", N: 7}, Record{7})
	// The old leader's Record(6) is applied after this one started.
	expect(t, c, Recorded{N: 6}, SendValidate{"a", 6}, SendValidate{"b", 6})
	expect(t, c, Recorded{N: 7}, SendValidate{"a", 7}, SendValidate{"b", 7})
}

func TestConfigValidate(t *testing.T) {
	for _, tc := range []struct {
		cfg  Config
		want string
	}{
		{Config{}, "coord config: Secondaries: empty"},
		{Config{Secondaries: []string{"a", ""}}, `coord config: Secondaries[1]: empty name`},
		{Config{Secondaries: []string{"a", "b", "a"}}, `coord config: Secondaries[2]: duplicate "a"`},
		{Config{Secondaries: []string{"a"}, RetransmitTicks: -1}, "coord config: RetransmitTicks: -1 is negative"},
		{Config{Secondaries: []string{"a"}}, "<nil>"},
		{Config{Dynamic: true}, "<nil>"},
		{Config{Dynamic: true, Secondaries: []string{"a", "a"}}, `coord config: Secondaries[1]: duplicate "a"`},
	} {
		if got := fmt.Sprint(tc.cfg.Validate()); got != tc.want {
			t.Errorf("%+v: %s, want %s", tc.cfg, got, tc.want)
		}
	}
	defer func() {
		if recover() == nil {
			t.Error("New with an invalid config did not panic")
		}
	}()
	New(Config{}, 0)
}

func TestDefaultRetransmit(t *testing.T) {
	c := New(Config{Secondaries: []string{"a"}}, 0)
	expect(t, c, Valid{Seq: 1}, SendPrepare{"a", 1})
	for range DefaultRetransmitTicks - 1 {
		expect(t, c, Tick{})
	}
	expect(t, c, Tick{}, SendPrepare{"a", 1})
}

func TestRecordFailedRetried(t *testing.T) {
	c := newTest(t, 0, "a", "b")
	expect(t, c, Valid{Seq: 4}, SendPrepare{"a", 4}, SendPrepare{"b", 4})
	expect(t, c, Prepared{From: "a", N: 4})
	expect(t, c, Prepared{From: "b", N: 2}, Record{2})
	expect(t, c, Prepared{From: "b", N: 4}) // Record 2 in flight
	expect(t, c, RecordFailed{N: 3})        // not the one in flight: ignored
	if c.Recording() != 2 {
		t.Fatalf("Recording = %d after a RecordFailed of another N", c.Recording())
	}
	// The failed Record is given up; the next one takes what is prepared
	// now.
	expect(t, c, RecordFailed{N: 2}, Record{4})
	// The failed entry was applied after all: still waiting for 4.
	expect(t, c, Recorded{N: 2}, SendValidate{"a", 2}, SendValidate{"b", 2})
	if c.Recording() != 4 {
		t.Fatalf("Recording = %d, want 4", c.Recording())
	}
	expect(t, c, Recorded{N: 4}, SendValidate{"a", 4}, SendValidate{"b", 4})
	expect(t, c, RecordFailed{N: 4}) // late: nothing in flight
}

// TestRegisteredNotValidatedUntilPrepared: a secondary that joins after a
// point was recorded is never sent VALIDATE of a point it has not prepared,
// and holds the next points back until it caught up.
func TestRegisteredNotValidatedUntilPrepared(t *testing.T) {
	c := newTest(t, 0, "a")
	expect(t, c, Valid{Seq: 10}, SendPrepare{"a", 10})
	expect(t, c, Prepared{From: "a", N: 10}, Record{10})
	expect(t, c, Registered{ID: "j"}, SendPrepare{"j", 10})
	expect(t, c, Registered{ID: "j"}) // known: ignored
	if got := c.Secondaries(); !slices.Equal(got, []string{"a", "j"}) {
		t.Fatalf("Secondaries = %v", got)
	}
	// Record 10 was decided without j: it is recorded, but j did not
	// prepare it and is not told to apply it.
	expect(t, c, Recorded{N: 10}, SendValidate{"a", 10})
	if p, _ := c.Prepared("j"); p != 0 {
		t.Fatalf("Prepared(j) = %d, want 0", p)
	}
	expect(t, c, Valid{Seq: 15}) // j holds the next round back
	if got := c.HeldBackBy(); got != "j" {
		t.Fatalf("HeldBackBy = %q, want j", got)
	}
	expect(t, c, Tick{})
	expect(t, c, Tick{}, SendValidate{"a", 10}, SendPrepare{"j", 10})
	expect(t, c, Hello{From: "j", Applied: 0, Durable: 4}, SendPrepare{"j", 10})
	expect(t, c, Applied{From: "a", N: 10})
	for range 6 {
		for _, a := range c.Step(Tick{}) {
			if v, ok := a.(SendValidate); ok && v.To == "j" {
				t.Fatalf("%v while j holds only 4", v)
			}
		}
	}
	// j reaches the recorded point: VALIDATE at once, and the next round
	// opens.
	expect(t, c, Prepared{From: "j", N: 10}, SendValidate{"j", 10}, SendPrepare{"a", 15}, SendPrepare{"j", 15})
	expect(t, c, Prepared{From: "a", N: 15})
	expect(t, c, Prepared{From: "j", N: 15}, Record{15})
	expect(t, c, Recorded{N: 15}, SendValidate{"a", 15}, SendValidate{"j", 15})
}

// TestDynamicAssumesNothing: with Config.Dynamic a new coordinator sends
// VALIDATE(recorded) only to the secondaries that said they hold it.
func TestDynamicAssumesNothing(t *testing.T) {
	c := New(Config{Secondaries: []string{"a", "b"}, RetransmitTicks: 2, Dynamic: true}, 5)
	if p, _ := c.Prepared("a"); p != 0 {
		t.Fatalf("Prepared(a) = %d, want 0", p)
	}
	// PREPARE(recorded) asks each what it holds; no VALIDATE yet.
	expect(t, c, Tick{}, SendPrepare{"a", 5}, SendPrepare{"b", 5})
	expect(t, c, Hello{From: "a", Applied: 3, Durable: 8}, SendValidate{"a", 5})
	expect(t, c, Hello{From: "b", Applied: 0, Durable: 2}, SendPrepare{"b", 5})
	expect(t, c, Valid{Seq: 8})
	expect(t, c, Tick{})
	expect(t, c, Tick{}, SendValidate{"a", 5}, SendPrepare{"b", 5})
	// An old leader's Record(7) applied late: a holds 8, b only 2.
	expect(t, c, Recorded{N: 7}, SendValidate{"a", 7})
	expect(t, c, Prepared{From: "b", N: 7}, SendValidate{"b", 7}, SendPrepare{"b", 8}) // a holds 8

	expect(t, c, Prepared{From: "b", N: 8}, Record{8})
}

func TestRemovedLetsOthersRecord(t *testing.T) {
	c := New(Config{Dynamic: true, RetransmitTicks: 2}, 0)
	expect(t, c, Valid{Seq: 3}) // nobody to prepare for
	expect(t, c, Tick{})
	if c.HeldBackBy() != "" || c.MinApplied() != 0 || len(c.Secondaries()) != 0 {
		t.Fatalf("empty group: HeldBackBy %q MinApplied %d Secondaries %v", c.HeldBackBy(), c.MinApplied(), c.Secondaries())
	}
	expect(t, c, Registered{ID: "a"}, SendPrepare{"a", 3}) // the round opens
	expect(t, c, Registered{ID: "b"}, SendPrepare{"b", 3})
	expect(t, c, Tick{})
	expect(t, c, Prepared{From: "a", N: 3})
	expect(t, c, Removed{ID: "b"}, Record{3})
	expect(t, c, Removed{ID: "zz"})
	expect(t, c, Prepared{From: "b", N: 3}) // gone: ignored
	expect(t, c, Recorded{N: 3}, SendValidate{"a", 3})
	expect(t, c, Removed{ID: "a"})
	expect(t, c, Valid{Seq: 9})
	expect(t, c, Tick{})
}
