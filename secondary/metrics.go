package secondary

import (
	"github.com/prometheus/client_golang/prometheus"
)

// metricStates are the values of Status.State, in the order the
// tricopy_secondary_state metric lists them.
var metricStates = []string{StatePair, StateCopy, StateResync, StateFailed, StatePromoted, StateFailback}

// collector is the Prometheus collector of one Secondary; see NewCollector.
type collector struct {
	s *Secondary

	applied, durable, fetched, validated *prometheus.Desc
	epoch, connected, state, promoted    *prometheus.Desc
	peers, authRefused                   *prometheus.Desc
}

// NewCollector returns a Prometheus collector of s's state, read from
// s.Status at each scrape:
//
//	tricopy_secondary_applied_seq     the validated point the replica is at
//	tricopy_secondary_durable_seq     every batch up to it is durably staged
//	tricopy_secondary_fetched_seq     every batch up to it was fetched
//	tricopy_secondary_validated_seq   the highest validated point heard (0: none pending)
//	tricopy_secondary_epoch           the volume's epoch
//	tricopy_secondary_connected       1 while the link to the leader is open
//	tricopy_secondary_state{state}    1 for the current state, 0 for the others
//	tricopy_secondary_promoted        1 once the volume is a primary
//	tricopy_secondary_peers           the group's secondaries known
//	tricopy_secondary_auth_refused_total  admin API requests refused for their certificate
//
// Every series has the labels volume and secondary (its ID). They are
// constant labels of the collector's descriptors, so that collectors of
// several secondaries (tricopy up runs one per volume) register on one
// registry side by side, and each can be unregistered alone (a registry
// cannot unregister an unchecked collector).
//
// Register it after Open and unregister it before Close.
func NewCollector(s *Secondary) prometheus.Collector {
	labels := prometheus.Labels{"volume": s.cfg.Volume, "secondary": s.cfg.ID}
	desc := func(name, help string, variable ...string) *prometheus.Desc {
		return prometheus.NewDesc("tricopy_secondary_"+name, help, variable, labels)
	}
	return &collector{
		s:         s,
		applied:   desc("applied_seq", "The validated point the secondary's replica (and its mount) is at."),
		durable:   desc("durable_seq", "Every batch of the volume up to this seq is durably staged."),
		fetched:   desc("fetched_seq", "Every batch of the volume up to this seq was fetched from the intermediate."),
		validated: desc("validated_seq", "The highest validated point heard and not yet applied; 0 if none is pending."),
		epoch:     desc("epoch", "The volume's epoch as last learned, or the new one once promoted."),
		connected: desc("connected", "1 while the secondary's link to the intermediate leader is open, else 0."),
		state:     desc("state", "1 for the secondary's current state, 0 for the others.", "state"),
		promoted:  desc("promoted", "1 once the secondary's volume was promoted to a primary, else 0."),
		peers:     desc("peers", "Number of the group's secondaries the secondary knows of."),
		authRefused: desc("auth_refused_total",
			"Admin API requests (promote, unapplied, fsck) refused because the client certificate holds no admin grant."),
	}
}

// Describe implements prometheus.Collector.
func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.applied, c.durable, c.fetched, c.validated, c.epoch, c.connected, c.state, c.promoted, c.peers, c.authRefused} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *collector) Collect(ch chan<- prometheus.Metric) {
	st := c.s.Status()
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	gauge(c.applied, float64(st.AppliedSeq))
	gauge(c.durable, float64(st.DurableSeq))
	gauge(c.fetched, float64(st.FetchedSeq))
	gauge(c.validated, float64(st.ValidatedSeq))
	gauge(c.epoch, float64(st.Epoch))
	gauge(c.connected, bool01(st.Connected))
	for _, s := range metricStates {
		gauge(c.state, bool01(st.State == s), s)
	}
	gauge(c.promoted, bool01(st.Role == RolePrimary))
	gauge(c.peers, float64(len(st.Peers)))
	ch <- prometheus.MustNewConstMetric(c.authRefused, prometheus.CounterValue, float64(c.s.authRefused.Load()))
}

// bool01 is 1 for true, 0 for false.
func bool01(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

var _ prometheus.Collector = (*collector)(nil)
