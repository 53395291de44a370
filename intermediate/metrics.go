package intermediate

import (
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/raft"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/tricopy/tricopy/intermediate/wire"
)

// Label keys of the node's metrics.
const (
	metricLabelState     = "state"
	metricLabelVolume    = "volume"
	metricLabelSecondary = "secondary"
	metricLabelCode      = "code"
	metricLabelMethod    = "method"
)

// Values of the method label of tricopy_intermediate_auth_refused_total
// for connections refused before any call.
const (
	methodTLSHandshake  = "tls_handshake"
	methodRaftHandshake = "raft_handshake"
)

// Descriptions of the gauges the node's collector reads at scrape time.
var (
	descCommittedSeq = prometheus.NewDesc("tricopy_intermediate_committed_seq",
		"Seq of the last batch committed in the group, as this node's state machine applied it.", nil, nil)
	descValidSeq = prometheus.NewDesc("tricopy_intermediate_valid_seq",
		"Valid seq of the group (every batch up to it is committed and gapless), as this node applied it.", nil, nil)
	descValidatedSeq = prometheus.NewDesc("tricopy_intermediate_validated_seq",
		"Validated seq recorded in the log: every registered secondary prepared it.", nil, nil)
	descAppliedIndex = prometheus.NewDesc("tricopy_intermediate_applied_index",
		"Raft index of the last entry this node's state machine applied.", nil, nil)
	descJournalBatches = prometheus.NewDesc("tricopy_intermediate_journal_batches",
		"Committed batches held in the journal (not trimmed yet).", nil, nil)
	descJournalBytes = prometheus.NewDesc("tricopy_intermediate_journal_bytes",
		"Block bytes of the committed batches held in the journal.", nil, nil)
	descJournalBudget = prometheus.NewDesc("tricopy_intermediate_journal_budget_bytes",
		"Journal budget in bytes: above it the leader refuses Submit with journal_full.", nil, nil)
	descLeader = prometheus.NewDesc("tricopy_intermediate_leader",
		"1 when this node is the Raft leader, 0 otherwise.", nil, nil)
	descRaftState = prometheus.NewDesc("tricopy_intermediate_raft_state",
		"1 for this node's current Raft state, 0 for the other states.", []string{metricLabelState}, nil)
	descFailed = prometheus.NewDesc("tricopy_intermediate_failed",
		"1 when the state machine stopped applying after a fatal error (the node must be restarted), 0 otherwise.", nil, nil)

	descVolumeEpoch = prometheus.NewDesc("tricopy_intermediate_volume_epoch",
		"Current epoch of the volume.", []string{metricLabelVolume}, nil)
	descVolumeCommittedSeq = prometheus.NewDesc("tricopy_intermediate_volume_committed_seq",
		"Seq of the volume's last committed batch.", []string{metricLabelVolume}, nil)
	descVolumePrimaryConnected = prometheus.NewDesc("tricopy_intermediate_volume_primary_connected",
		"1 while the volume's primary has a Submit stream open to this leader (exported by the leader only).", []string{metricLabelVolume}, nil)
	descVolumeDirtyRegions = prometheus.NewDesc("tricopy_intermediate_volume_dirty_regions",
		"Dirty regions of the volume as its primary last reported them to this leader (exported by the leader only).", []string{metricLabelVolume}, nil)
	descVolumeResyncDone = prometheus.NewDesc("tricopy_intermediate_volume_resync_done_regions",
		"Regions the volume's primary has resynchronised, as it last reported (exported by the leader only).", []string{metricLabelVolume}, nil)
	descVolumeResyncTotal = prometheus.NewDesc("tricopy_intermediate_volume_resync_total_regions",
		"Regions the volume's primary has to resynchronise in all, as it last reported (exported by the leader only).", []string{metricLabelVolume}, nil)

	secondaryLabels       = []string{metricLabelSecondary, metricLabelVolume}
	descSecondaryPrepared = prometheus.NewDesc("tricopy_intermediate_secondary_prepared_seq",
		"Seq the secondary last answered PREPARED for, as the leader knows it.", secondaryLabels, nil)
	descSecondaryApplied = prometheus.NewDesc("tricopy_intermediate_secondary_applied_seq",
		"Seq the secondary last reported applied, as the leader knows it.", secondaryLabels, nil)
	descSecondaryLagBatches = prometheus.NewDesc("tricopy_intermediate_secondary_lag_batches",
		"Batches of the secondary's volume in the journal past its applied seq.", secondaryLabels, nil)
	descSecondaryLagBytes = prometheus.NewDesc("tricopy_intermediate_secondary_lag_bytes",
		"Block bytes of the batches of the secondary's volume in the journal past its applied seq.", secondaryLabels, nil)
	descSecondaryLagSeconds = prometheus.NewDesc("tricopy_intermediate_secondary_lag_seconds",
		"Age of the oldest batch of the secondary's volume in the journal past its applied seq (0 without lag).", secondaryLabels, nil)
	descSecondaryConnected = prometheus.NewDesc("tricopy_intermediate_secondary_connected",
		"1 while the secondary has a Coordinate stream open to the leader.", secondaryLabels, nil)
	descSecondarySuspended = prometheus.NewDesc("tricopy_intermediate_secondary_suspended",
		"1 when the secondary is suspended (the journal no longer waits for it).", secondaryLabels, nil)
)

// raftStates are the values of the state label of
// tricopy_intermediate_raft_state.
var raftStates = []raft.RaftState{raft.Leader, raft.Follower, raft.Candidate, raft.Shutdown}

// nodeMetrics is the Prometheus collector of one node. Most of its metrics
// are gauges read at scrape time from the same state the Status RPC
// answers (Node.status); the counters of applied batches and Submit
// refusals and the Submit latency histogram are updated where the work
// happens. A nil *nodeMetrics (Config.Metrics not set) ignores every
// update.
//
// Collect runs on the scraper's goroutine, concurrently with everything
// else; the updates come from the FSM's apply goroutine (applied) and the
// Submit handlers (refusal, submitted).
type nodeMetrics struct {
	n          *Node
	batches    *prometheus.CounterVec
	bytes      *prometheus.CounterVec
	refusals   *prometheus.CounterVec
	authRefuse *prometheus.CounterVec
	submitTime prometheus.Histogram

	// mu guards closed: Collect reads the node only while it is open.
	mu     sync.RWMutex
	closed bool
}

var _ prometheus.Collector = (*nodeMetrics)(nil)

func newNodeMetrics(n *Node) *nodeMetrics {
	return &nodeMetrics{
		n: n,
		batches: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tricopy_intermediate_batches_committed_total",
			Help: "Committed batches of the volume this node's state machine applied since the process started " +
				"(on every node, leader or follower, including the log replayed at start; not those a snapshot brought).",
		}, []string{metricLabelVolume}),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tricopy_intermediate_bytes_committed_total",
			Help: "Block bytes of the committed batches counted by tricopy_intermediate_batches_committed_total.",
		}, []string{metricLabelVolume}),
		refusals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tricopy_intermediate_refusals_total",
			Help: "Submit streams this node ended with a protocol error, by error code (stale_epoch, not_leader, journal_full, ...).",
		}, []string{metricLabelCode}),
		authRefuse: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tricopy_intermediate_auth_refused_total",
			Help: "Calls refused because the caller's certificate does not allow them, by gRPC method; " +
				"method tls_handshake counts client connections and raft_handshake Raft connections refused at the TLS handshake.",
		}, []string{metricLabelMethod}),
		submitTime: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "tricopy_intermediate_submit_seconds",
			Help:    "Time from a batch's arrival on the leader's Submit stream to the sending of its ack.",
			Buckets: prometheus.ExponentialBucketsRange(100e-6, 10, 16),
		}),
	}
}

// register registers m on reg.
func (m *nodeMetrics) register(reg prometheus.Registerer) error {
	if err := reg.Register(m); err != nil {
		return fmt.Errorf("register metrics of node %s: %w", m.n.cfg.ID, err)
	}
	return nil
}

// unregister stops Collect from reading the node, then removes m from
// reg.
func (m *nodeMetrics) unregister(reg prometheus.Registerer) {
	m.mu.Lock()
	m.closed = true
	m.mu.Unlock()
	reg.Unregister(m)
}

// applied counts one batch of volume applied by the state machine, with
// its block bytes. It is the FSM's OnBatchApplied.
func (m *nodeMetrics) applied(volume string, blockBytes int) {
	if m == nil {
		return
	}
	m.batches.WithLabelValues(volume).Inc()
	m.bytes.WithLabelValues(volume).Add(float64(blockBytes))
}

// refusal counts err when it is a protocol error ending a Submit stream.
func (m *nodeMetrics) refusal(err error) {
	if m == nil || err == nil {
		return
	}
	var we *wire.Error
	if errors.As(err, &we) {
		m.refusals.WithLabelValues(errorCodeName(we.Code)).Inc()
	}
}

// authRefused counts a call (or connection) refused by authorization.
func (m *nodeMetrics) authRefused(method string) {
	if m == nil {
		return
	}
	m.authRefuse.WithLabelValues(method).Inc()
}

// submitted records the latency of batches that arrived at each of
// arrivals and were acked at now.
func (m *nodeMetrics) submitted(arrivals []time.Time, now time.Time) {
	if m == nil {
		return
	}
	for _, at := range arrivals {
		m.submitTime.Observe(now.Sub(at).Seconds())
	}
}

// errorCodeName is the refusals_total label of code: its name without the
// ERROR_CODE_ prefix, in lower case ("stale_epoch").
func errorCodeName(code wire.ErrorCode) string {
	return strings.ToLower(strings.TrimPrefix(code.String(), "ERROR_CODE_"))
}

// Describe implements prometheus.Collector.
func (m *nodeMetrics) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{
		descCommittedSeq, descValidSeq, descValidatedSeq, descAppliedIndex, descJournalBatches, descJournalBytes,
		descJournalBudget, descLeader, descRaftState, descFailed,
		descVolumeEpoch, descVolumeCommittedSeq, descVolumePrimaryConnected, descVolumeDirtyRegions,
		descVolumeResyncDone, descVolumeResyncTotal,
		descSecondaryPrepared, descSecondaryApplied, descSecondaryLagBatches, descSecondaryLagBytes,
		descSecondaryLagSeconds, descSecondaryConnected, descSecondarySuspended,
	} {
		ch <- d
	}
	m.batches.Describe(ch)
	m.bytes.Describe(ch)
	m.refusals.Describe(ch)
	m.authRefuse.Describe(ch)
	m.submitTime.Describe(ch)
}

// Collect implements prometheus.Collector: it reads the node's state
// through Node.status, the code path of the Status RPC. The per-secondary
// metrics and the primaries' (connected, dirty and resync regions) are the
// leader's view: they are exported only while this node coordinates.
func (m *nodeMetrics) Collect(ch chan<- prometheus.Metric) {
	m.batches.Collect(ch)
	m.bytes.Collect(ch)
	m.refusals.Collect(ch)
	m.authRefuse.Collect(ch)
	m.submitTime.Collect(ch)

	m.mu.RLock()
	defer m.mu.RUnlock()
	if m.closed {
		return
	}
	n := m.n
	state := n.raft.State()
	st, leading := n.status()

	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	gauge(descCommittedSeq, float64(st.GetCommittedSeq()))
	gauge(descValidSeq, float64(st.GetValidSeq()))
	gauge(descValidatedSeq, float64(st.GetValidatedSeq()))
	gauge(descAppliedIndex, float64(st.GetAppliedIndex()))
	gauge(descJournalBatches, float64(st.GetJournalBatches()))
	gauge(descJournalBytes, float64(st.GetJournalBytes()))
	gauge(descJournalBudget, float64(st.GetJournalBudget()))
	gauge(descLeader, boolValue(state == raft.Leader))
	for _, s := range raftStates {
		gauge(descRaftState, boolValue(s == state), s.String())
	}
	gauge(descFailed, boolValue(n.FatalErr() != nil))

	for _, v := range st.GetVolumes() {
		name := v.GetName()
		gauge(descVolumeEpoch, float64(v.GetEpoch()), name)
		gauge(descVolumeCommittedSeq, float64(v.GetCommittedSeq()), name)
		if leading {
			gauge(descVolumePrimaryConnected, boolValue(v.GetConnected()), name)
			gauge(descVolumeDirtyRegions, float64(v.GetDirtyRegions()), name)
			gauge(descVolumeResyncDone, float64(v.GetResyncDone()), name)
			gauge(descVolumeResyncTotal, float64(v.GetResyncTotal()), name)
		}
	}
	if !leading {
		return
	}
	for _, s := range st.GetSecondaries() {
		labels := []string{s.GetId(), s.GetVolume()}
		gauge(descSecondaryPrepared, float64(s.GetPreparedSeq()), labels...)
		gauge(descSecondaryApplied, float64(s.GetAppliedSeq()), labels...)
		gauge(descSecondaryLagBatches, float64(s.GetLagBatches()), labels...)
		gauge(descSecondaryLagBytes, float64(s.GetLagBytes()), labels...)
		gauge(descSecondaryLagSeconds, s.GetLagSeconds(), labels...)
		gauge(descSecondaryConnected, boolValue(s.GetConnected()), labels...)
		gauge(descSecondarySuspended, boolValue(s.GetSuspended()), labels...)
	}
}

// boolValue is 1 for true and 0 for false.
func boolValue(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
