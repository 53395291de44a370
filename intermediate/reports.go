package intermediate

import (
	"sync"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/tricopy/tricopy/intermediate/wire"
)

// primaryReports holds, on the leader, the latest PrimaryReport of each
// volume's primary and whether its Submit stream is open. It lives in memory
// only: a new leader learns the state from the primaries' next reports
// (a primary reports again when its stream reconnects).
type primaryReports struct {
	mu   sync.Mutex
	vols map[string]*primaryReport
}

type primaryReport struct {
	session   uint64 // the stream the report and the connection belong to
	connected bool
	report    *wire.PrimaryReport
	at        time.Time

	// The last open refused for a stale epoch: a fenced old primary.
	staleEpoch uint64
	stalePeer  string
	staleAt    time.Time
}

func newPrimaryReports() *primaryReports {
	return &primaryReports{vols: map[string]*primaryReport{}}
}

func (r *primaryReports) get(volume string) *primaryReport {
	pr := r.vols[volume]
	if pr == nil {
		pr = &primaryReport{}
		r.vols[volume] = pr
	}
	return pr
}

// connect records that the stream of session is open for volume.
func (r *primaryReports) connect(volume string, session uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	pr := r.get(volume)
	pr.session, pr.connected = session, true
}

// disconnect records that the stream of session ended, unless a newer
// stream of the volume took over already.
func (r *primaryReports) disconnect(volume string, session uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if pr := r.vols[volume]; pr != nil && pr.session == session {
		pr.connected = false
	}
}

// report records rep from the stream of session, unless a newer stream of
// the volume took over.
func (r *primaryReports) report(volume string, session uint64, rep *wire.PrimaryReport) {
	r.mu.Lock()
	defer r.mu.Unlock()
	pr := r.get(volume)
	if pr.session > session {
		return
	}
	pr.session, pr.report, pr.at = session, proto.CloneOf(rep), time.Now()
}

// staleOpen records an open of volume at a stale epoch (refused) from
// peer.
func (r *primaryReports) staleOpen(volume string, epoch uint64, peer string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	pr := r.get(volume)
	pr.staleEpoch, pr.stalePeer, pr.staleAt = epoch, peer, time.Now()
}

// fill copies what is known of volume's primary into vs.
func (r *primaryReports) fill(vs *wire.VolumeStatus) {
	r.mu.Lock()
	defer r.mu.Unlock()
	pr := r.vols[vs.GetName()]
	if pr == nil {
		return
	}
	vs.Connected = pr.connected
	if pr.staleEpoch != 0 {
		vs.StalePrimaryEpoch, vs.StalePrimaryPeer, vs.StalePrimaryTimeUnixNano = pr.staleEpoch, pr.stalePeer, pr.staleAt.UnixNano()
	}
	if rep := pr.report; rep != nil {
		vs.State, vs.DirtyRegions, vs.ResyncDone, vs.ResyncTotal, vs.Reason =
			rep.GetState(), rep.GetDirtyRegions(), rep.GetResyncDone(), rep.GetResyncTotal(), rep.GetReason()
	}
}

// trimPoint returns the highest seq the journal may be trimmed to as far as
// the primaries are concerned: for each volume with batches in the journal
// (vols, from the state machine; journalStart its first seq), its primary
// must have reported a durable seq, and the journal keeps the volume's
// batches after it. A volume whose primary holds all of its batches
// durably sets no bound; one whose primary never reported to this leader
// holds the journal where it is.
func (r *primaryReports) trimPoint(vols []VolumeInfo, committed, journalStart uint64) uint64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	point := committed
	for _, v := range vols {
		if v.LastSeq < journalStart {
			continue // nothing of it in the journal
		}
		pr := r.vols[v.Name]
		if pr == nil || pr.report == nil {
			return journalStart - 1
		}
		if d := pr.report.GetDurableSeq(); d < v.LastSeq {
			point = min(point, d)
		}
	}
	return point
}

// secondaryTrimPoint returns the highest seq the journal may be trimmed to
// as far as the secondaries are concerned: a registered secondary that is
// not suspended needs the batches of its volume after its applied point,
// as this leader knows it (applied; 0 when the leader has not heard from
// it, which holds the journal where it is). A secondary whose volume has no
// batch in the journal after that point sets no bound, and so does a
// suspended one or a group without secondaries.
func secondaryTrimPoint(vols []VolumeInfo, secs []SecondaryInfo, applied func(id string) uint64, committed, journalStart uint64) uint64 {
	if _, bound, ok := laggingSecondary(vols, secs, applied, committed, journalStart); ok {
		return bound
	}
	return committed
}

// laggingSecondary returns the registered, non-suspended secondary that
// bounds trimming the lowest (the first by ID among equals) and that bound,
// its applied point; ok is false when no secondary bounds it.
func laggingSecondary(vols []VolumeInfo, secs []SecondaryInfo, applied func(id string) uint64, committed, journalStart uint64) (id string, bound uint64, ok bool) {
	last := make(map[string]uint64, len(vols))
	for _, v := range vols {
		last[v.Name] = v.LastSeq
	}
	bound = committed
	for _, s := range secs {
		ls := last[s.Volume]
		if s.Suspended || ls < journalStart {
			continue // it waits for nothing, or nothing of its volume is in the journal
		}
		if a := applied(s.ID); a < ls && (!ok || a < bound) {
			id, bound, ok = s.ID, a, true
		}
	}
	return id, bound, ok
}
