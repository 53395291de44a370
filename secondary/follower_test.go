package secondary

import (
	"errors"
	"slices"
	"testing"
)

// expectF steps f with ev and checks the actions, in order.
func expectF(t *testing.T, f *Follower, ev FollowerEvent, want ...FollowerAction) {
	t.Helper()
	got := f.Step(ev)
	if !slices.Equal(got, want) {
		t.Fatalf("Step(%T%+v):\n got  %v\n want %v", ev, ev, got, want)
	}
}

// expectViolation steps f with ev and checks that it reports a violation
// wrapping want.
func expectViolation(t *testing.T, f *Follower, ev FollowerEvent, want error) {
	t.Helper()
	got := f.Step(ev)
	if len(got) != 1 {
		t.Fatalf("Step(%T%+v) = %v, want one violation", ev, ev, got)
	}
	v, ok := got[0].(Violation)
	if !ok || (want != nil && !errors.Is(v.Err, want)) {
		t.Fatalf("Step(%T%+v) = %v, want a violation wrapping %v", ev, ev, got, want)
	}
}

func TestFollowerHappyPath(t *testing.T) {
	f := NewFollower("a", 0, 0)
	expectF(t, f, Restarted{}, SendHello{Applied: 0, Durable: 0})
	expectF(t, f, PrepareMsg{N: 5})                       // nothing staged: nothing to say
	expectF(t, f, Staged{Durable: 3}, SendPrepared{N: 3}) // partial progress
	expectF(t, f, Staged{Durable: 7}, SendPrepared{N: 5}) // capped at what was asked
	expectF(t, f, Staged{Durable: 8})                     // nothing new to report
	expectF(t, f, ValidateMsg{N: 5}, StartApply{N: 5})
	expectF(t, f, ApplyDone{N: 5}, SendApplied{N: 5})
	if f.Applied() != 5 || f.Durable() != 8 || f.Applying() != 0 || f.ID() != "a" {
		t.Fatalf("A=%d D=%d applying %d id %q", f.Applied(), f.Durable(), f.Applying(), f.ID())
	}
}

func TestFollowerDuplicates(t *testing.T) {
	f := NewFollower("a", 0, 10)
	expectF(t, f, PrepareMsg{N: 4}, SendPrepared{N: 4})
	expectF(t, f, PrepareMsg{N: 4}, SendPrepared{N: 4}) // the answer may have been lost
	expectF(t, f, PrepareMsg{N: 2}, SendPrepared{N: 4}) // stale: the best answer
	expectF(t, f, ValidateMsg{N: 4}, StartApply{N: 4})
	expectF(t, f, ValidateMsg{N: 4}) // in flight already
	expectF(t, f, ValidateMsg{N: 3}) // lower, while applying
	expectF(t, f, ApplyDone{N: 4}, SendApplied{N: 4})
	expectF(t, f, ValidateMsg{N: 4}, SendApplied{N: 4}) // re-sent: answered
	expectF(t, f, ValidateMsg{N: 1}, SendApplied{N: 4}) // stale coordinator
	expectF(t, f, Staged{Durable: 6})                   // lower than known
	if f.Durable() != 10 {
		t.Fatalf("D = %d", f.Durable())
	}
}

func TestFollowerValidateWhileApplying(t *testing.T) {
	f := NewFollower("a", 0, 20)
	expectF(t, f, ValidateMsg{N: 5}, StartApply{N: 5})
	expectF(t, f, ValidateMsg{N: 9})
	expectF(t, f, ValidateMsg{N: 12}) // only the latest matters
	expectF(t, f, ValidateMsg{N: 7})
	expectF(t, f, ApplyDone{N: 5}, SendApplied{N: 5}, StartApply{N: 12})
	expectF(t, f, ApplyDone{N: 12}, SendApplied{N: 12})
	if f.Applying() != 0 {
		t.Fatalf("applying %d", f.Applying())
	}
}

func TestFollowerViolations(t *testing.T) {
	f := NewFollower("a", 2, 5)
	expectViolation(t, f, ApplyDone{N: 3}, nil) // none in flight
	expectF(t, f, ValidateMsg{N: 4}, StartApply{N: 4})
	expectViolation(t, f, ApplyDone{N: 5}, nil) // not the one in flight
}

// A validated point above what is staged (a secondary that joined late, or
// whose staging store recovered less) waits for the stage to reach it.
func TestFollowerValidateAboveStaged(t *testing.T) {
	f := NewFollower("a", 2, 5)
	expectF(t, f, ValidateMsg{N: 9})
	if f.Waiting() != 9 {
		t.Fatalf("waiting %d, want 9", f.Waiting())
	}
	expectF(t, f, Staged{Durable: 8}) // nothing asked, 9 not staged yet
	expectF(t, f, Staged{Durable: 12}, StartApply{N: 9})
	expectF(t, f, ValidateMsg{N: 11}) // waits for the apply in flight
	expectF(t, f, ValidateMsg{N: 14}) // and now above D: waits for both
	expectF(t, f, ApplyDone{N: 9}, SendApplied{N: 9})
	expectF(t, f, Staged{Durable: 14}, StartApply{N: 14})
	expectF(t, f, ApplyDone{N: 14}, SendApplied{N: 14})
	if f.Waiting() != 0 {
		t.Fatalf("waiting %d after applying everything", f.Waiting())
	}
}

func TestFollowerRestartMidRound(t *testing.T) {
	f := NewFollower("a", 0, 0)
	expectF(t, f, PrepareMsg{N: 6})
	expectF(t, f, Staged{Durable: 6}, SendPrepared{N: 6})
	expectF(t, f, ValidateMsg{N: 6}, StartApply{N: 6})
	// Crash with the apply in flight; the round did not make it. The
	// restarted core starts from what is on disk and greets.
	f = NewFollower("a", 0, 6)
	expectF(t, f, Restarted{}, SendHello{Applied: 0, Durable: 6})
	expectViolation(t, f, ApplyDone{N: 6}, nil) // the old incarnation's: refused
	f = NewFollower("a", 0, 6)
	expectF(t, f, Staged{Durable: 7}) // nothing asked since the restart
	expectF(t, f, ValidateMsg{N: 6}, StartApply{N: 6})
	expectF(t, f, ApplyDone{N: 6}, SendApplied{N: 6})
	// Crash after the round made it: nothing to do again.
	f = NewFollower("a", 6, 7)
	expectF(t, f, Restarted{}, SendHello{Applied: 6, Durable: 7})
	expectF(t, f, ValidateMsg{N: 6}, SendApplied{N: 6})
}

// After a resync staged the volume at 20, points between the applied one
// and 20 wait; 20 and above apply.
func TestFollowerResynced(t *testing.T) {
	f := NewFollower("a", 5, 8)
	expectF(t, f, PrepareMsg{N: 30}, SendPrepared{N: 8})
	expectF(t, f, Resynced{At: 20}, SendPrepared{N: 20})
	expectF(t, f, ValidateMsg{N: 12}) // below the floor: waits
	expectF(t, f, Staged{Durable: 25}, SendPrepared{N: 25})
	expectF(t, f, ValidateMsg{N: 22}, StartApply{N: 22})
	expectF(t, f, ApplyDone{N: 22}, SendApplied{N: 22})
	expectF(t, f, ValidateMsg{N: 25}, StartApply{N: 25})
}
