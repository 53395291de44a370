package e2e

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// copyWindowDoc is the part of `tricopy status --json` about copy windows.
type copyWindowDoc struct {
	ValidSeq      uint64 `json:"valid_seq"`
	ValidatedSeq  uint64 `json:"validated_seq"`
	ConsistentSeq uint64 `json:"consistent_seq"`
	CopyHeldBy    string `json:"copy_held_by"`
	Volumes       []struct {
		Name         string `json:"name"`
		Epoch        uint64 `json:"epoch"`
		State        string `json:"state"`
		ResyncDone   uint64 `json:"resync_done_regions"`
		CopySinceSeq uint64 `json:"copy_since_seq"`
		Secondaries  []struct {
			ID         string `json:"id"`
			AppliedSeq uint64 `json:"applied_seq"`
		} `json:"secondaries"`
	} `json:"volumes"`
}

// copyWindowStatus reads `tricopy status --json` (whatever its exit code).
func copyWindowStatus(t testing.TB, addrs []string) copyWindowDoc {
	t.Helper()
	cmd := command(t, "", tricopyBin, "status", "--intermediate", strings.Join(addrs, ","), "--json")
	out, _ := cmd.Output()
	var doc copyWindowDoc
	if err := json.Unmarshal(out, &doc); err != nil {
		t.Fatalf("tricopy status --json: %v\n%s", err, out)
	}
	return doc
}

// TestPromoteDuringResync: primary a (fence level never) is cut off from
// the intermediate, writes 4 MiB on its own, and resynchronises them,
// paced by --resync-rate, when the intermediate is back. While that resync
// runs the intermediate's image of a is torn, and the group's validated
// point must stay below it on every secondary although b's writes go on.
// Both primaries are SIGKILLed in the middle of the resync and the far
// site is promoted with the intermediate up: the promotion lands below the
// copy window, both promoted mounts hold the files of that point exactly,
// the new primaries start detached, learn from the intermediate which
// regions the old primaries wrote after the point, resynchronise them and
// reach PAIR, and in the end each promoted volume is byte-identical to its
// intermediate volume, which fsck finds clean.
func TestPromoteDuringResync(t *testing.T) {
	s := startSiteWith(t, nil, []string{"--fence", "never", "--fence-timeout", "1s", "--resync-rate", "1MiB"})
	want := map[string][]byte{}
	write := func(v, mnt, name string, size int) []byte {
		t.Helper()
		data := fileData(uint64(size), v+name, size)
		if err := writeSynced(filepath.Join(mnt, name), data); err != nil {
			t.Fatalf("write %s on %s: %v", name, mnt, err)
		}
		return data
	}
	for i := range 10 {
		for _, v := range []string{"a", "b"} {
			name := fmt.Sprintf("before-%02d", i)
			want[v+"/"+name] = write(v, s.prim[v].mnt, name, 20_000+i*3_000)
		}
	}
	waitAll(t, s.addrs)

	// a goes on alone while the intermediate is down.
	s.nodes[0].stop(t)
	for i := range 4 {
		write("a", s.prim["a"].mnt, fmt.Sprintf("suspended-%d", i), 1<<20)
	}
	s.nodes[0].restart(t)

	// a resynchronises at 1 MiB/s: its copy window is open.
	var held copyWindowDoc
	waitFor(t, 60*time.Second, "a's resync to have sent a copy batch", func() bool {
		held = copyWindowStatus(t, s.addrs)
		for _, v := range held.Volumes {
			if v.Name == "a" {
				return v.State == "RESYNC" && v.ResyncDone > 0 && v.CopySinceSeq > 0
			}
		}
		return false
	})
	write("b", s.prim["b"].mnt, "during", 50_000) // after the window opened
	time.Sleep(500 * time.Millisecond)            // coordinator rounds
	held = copyWindowStatus(t, s.addrs)
	var since uint64
	for _, v := range held.Volumes {
		if v.Name == "a" {
			since = v.CopySinceSeq
		}
	}
	t.Logf("during a's resync: valid %d, consistent %d held by %q, validated %d, window from %d",
		held.ValidSeq, held.ConsistentSeq, held.CopyHeldBy, held.ValidatedSeq, since)
	if since == 0 || held.CopyHeldBy != "a" || held.ConsistentSeq != since-1 || held.ValidatedSeq > held.ConsistentSeq || held.ValidSeq <= since {
		t.Fatalf("status during a's resync: %+v; want the validated point held below a's window", held)
	}
	for _, v := range held.Volumes {
		for _, sec := range v.Secondaries {
			if sec.AppliedSeq >= since {
				t.Fatalf("secondary %s applied seq %d, inside a's copy window from %d", sec.ID, sec.AppliedSeq, since)
			}
		}
	}

	// The disaster, in the middle of the resync.
	for _, v := range []string{"a", "b"} {
		s.pmounts[v].kill(t)
	}
	doc := promote(t, s.sec["b"].listen)
	if !doc.Drained || doc.N != since-1 {
		t.Fatalf("promote: %+v, want drained at seq %d, just below a's copy window", doc, since-1)
	}
	// The promoted mounts hold the point: the files of before, and none
	// of those written after it.
	for key, data := range want {
		v, name, _ := strings.Cut(key, "/")
		checkFile(t, filepath.Join(s.sec[v].mnt, name), data)
	}
	for _, gone := range []string{"a/suspended-0", "a/suspended-3", "b/during"} {
		v, name, _ := strings.Cut(gone, "/")
		if _, err := os.Stat(filepath.Join(s.sec[v].mnt, name)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s on the promoted mount: %v, want it absent (written after the promote point)", gone, err)
		}
	}
	// The new primaries resynchronise what the old ones wrote after the
	// point, then mirror: PAIR at epoch 2, the window closed.
	for _, v := range []string{"a", "b"} {
		want[v+"/after"] = write(v, s.sec[v].mnt, "after", 300_000)
	}
	waitFor(t, 60*time.Second, "both promoted volumes in PAIR at epoch 2 with no copy window", func() bool {
		d := copyWindowStatus(t, s.addrs)
		for _, v := range d.Volumes {
			if v.Epoch != 2 || v.State != "PAIR" || v.CopySinceSeq != 0 {
				return false
			}
		}
		return len(d.Volumes) == 2 && d.CopyHeldBy == ""
	})
	for _, v := range []string{"a", "b"} {
		s.smounts[v].stop(t)
	}
	s.nodes[0].stop(t)
	for _, v := range []string{"a", "b"} {
		compareReplicas(t, filepath.Join(s.sec[v].data, "replica"), s.nodes[0].volumeDir(v))
		copy := filepath.Join(s.base, "check", v)
		copyIntermediateVolume(t, s.nodes[0].volumeDir(v), copy)
		fsckClean(t, copy)
	}
}
