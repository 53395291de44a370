package mirror

import (
	"github.com/prometheus/client_golang/prometheus"
)

// metricStates are the pair states, in the order the tricopy_mirror_state
// metric lists them.
var metricStates = []State{StateCopy, StatePair, StateSusp, StateResync, StateFenced}

// collector is the Prometheus collector of one Mirror; see NewCollector.
type collector struct {
	m *Mirror

	state, epoch, dirty, resyncDone, resyncTotal *prometheus.Desc
	copied, pending, applied, appliedVS          *prometheus.Desc
	detached                                     *prometheus.Desc
}

// NewCollector returns a Prometheus collector of m's state, read from
// m.Status and m.Detached at each scrape; volume is the value of the label
// volume of every series:
//
//	tricopy_mirror_state{state}              1 for the current pair state, 0 for the others
//	tricopy_mirror_epoch                     the volume's epoch
//	tricopy_mirror_dirty_regions             regions marked in the primary bitmap
//	tricopy_mirror_resync_done_regions       regions the running copy or resync copied
//	tricopy_mirror_resync_total_regions      regions it copies in all
//	tricopy_mirror_copied_bytes_total        block bytes of committed copy batches since Open
//	tricopy_mirror_pending_batches           batches sent and not yet committed
//	tricopy_mirror_applied_seq               seq of the last committed batch applied locally
//	tricopy_mirror_applied_volume_seq        and its volume seq
//	tricopy_mirror_detached                  1 while detached from the intermediate
//
// volume is a constant label of the collector's descriptors, so that the
// collectors of several volumes (tricopy up mounts several) register on one
// registry side by side, and each can be unregistered alone (a registry
// cannot unregister an unchecked collector).
//
// Register it after Open and unregister it before Close.
func NewCollector(m *Mirror, volume string) prometheus.Collector {
	labels := prometheus.Labels{"volume": volume}
	desc := func(name, help string, variable ...string) *prometheus.Desc {
		return prometheus.NewDesc("tricopy_mirror_"+name, help, variable, labels)
	}
	return &collector{
		m:           m,
		state:       desc("state", "1 for the mirror's current pair state, 0 for the others.", "state"),
		epoch:       desc("epoch", "The volume's epoch."),
		dirty:       desc("dirty_regions", "Regions marked in the primary bitmap."),
		resyncDone:  desc("resync_done_regions", "Regions the running copy or resync has copied (0 when none runs)."),
		resyncTotal: desc("resync_total_regions", "Regions the running copy or resync copies in all (0 when none runs)."),
		copied:      desc("copied_bytes_total", "Block bytes of committed copy batches (initial copy and resyncs) since the mirror opened."),
		pending:     desc("pending_batches", "Batches sent to the intermediate and not yet committed."),
		applied:     desc("applied_seq", "Seq of the last committed batch applied to the local volume."),
		appliedVS:   desc("applied_volume_seq", "Volume seq of the last committed batch applied to the local volume."),
		detached:    desc("detached", "1 while the volume, promoted without the intermediate, is detached from it, else 0."),
	}
}

// Describe implements prometheus.Collector.
func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.state, c.epoch, c.dirty, c.resyncDone, c.resyncTotal, c.copied, c.pending, c.applied, c.appliedVS, c.detached} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *collector) Collect(ch chan<- prometheus.Metric) {
	st := c.m.Status()
	detached := c.m.Detached()
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	for _, s := range metricStates {
		gauge(c.state, bool01(st.State == s), string(s))
	}
	gauge(c.epoch, float64(st.Epoch))
	gauge(c.dirty, float64(st.DirtyRegions))
	gauge(c.resyncDone, float64(st.ResyncDone))
	gauge(c.resyncTotal, float64(st.ResyncTotal))
	ch <- prometheus.MustNewConstMetric(c.copied, prometheus.CounterValue, float64(st.CopiedBytes))
	gauge(c.pending, float64(st.PendingBatches))
	gauge(c.applied, float64(st.AppliedSeq))
	gauge(c.appliedVS, float64(st.AppliedVolumeSeq))
	gauge(c.detached, bool01(detached))
}

// bool01 is 1 for true, 0 for false.
func bool01(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

var _ prometheus.Collector = (*collector)(nil)
