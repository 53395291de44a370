package benchreport

import (
	"fmt"
	"image/color"
	"math"
	"slices"
	"strings"
	"time"

	"github.com/tricopy/tricopy/cmd/tricopy/internal/failoverbench"
	"github.com/tricopy/tricopy/cmd/tricopy/internal/fsbench"
	"github.com/tricopy/tricopy/cmd/tricopy/internal/lagbench"
	"github.com/tricopy/tricopy/cmd/tricopy/internal/mirrorbench"
	"github.com/tricopy/tricopy/cmd/tricopy/internal/plot"
	"github.com/tricopy/tricopy/cmd/tricopy/internal/replbench"
)

// AddFS adds the section of `tricopy bench fs`: its table and, per fio
// job with latencies, the distribution on tricopy, on the loopback
// yardstick and on the bare directory.
func (r *Report) AddFS(res *fsbench.Results) error {
	jobs := []struct {
		file, title, caption string
		hist                 func(*fsbench.TargetResult) dist
	}{
		{"fs-fsync-latency.png", "fsync after a 4 KiB write", "Latency of the fsync after each 4 KiB write (fio fsync=1 job)",
			func(t *fsbench.TargetResult) dist { return dist{hist: t.Fsync.SyncHist} }},
		{"fs-write-latency.png", "4 KiB write in the fsync=1 job", "Latency of the 4 KiB write calls of the fsync=1 job",
			func(t *fsbench.TargetResult) dist { return dist{hist: t.Fsync.ClatHist} }},
		{"fs-randwrite-latency.png", "random 4 KiB write", "Latency of random 4 KiB writes (page cache, fsync at the end)",
			func(t *fsbench.TargetResult) dist { return dist{hist: t.RandWrite.ClatHist} }},
		{"fs-randread-latency.png", "random 4 KiB read", "Latency of random 4 KiB reads (cache dropped before the job)",
			func(t *fsbench.TargetResult) dist { return dist{hist: t.RandRead.ClatHist} }},
	}
	names := map[string]struct {
		name string
		col  color.RGBA
	}{
		fsbench.TargetTricopy:  {"tricopy", colorOurs},
		fsbench.TargetLoopback: {"go-fuse loopback (yardstick)", colorYardstick},
		fsbench.TargetBare:     {"bare directory", colorBare},
	}
	var plots []namedPlot
	for _, j := range jobs {
		var ds []dist
		for i := range res.Targets {
			t := &res.Targets[i]
			d := j.hist(t)
			n, ok := names[t.Target]
			if !ok {
				n.name, n.col = t.Target, plot.Red
			}
			d.name, d.color = n.name, n.col
			ds = append(ds, d)
		}
		plots = append(plots, namedPlot{file: j.file, caption: j.caption + ": tricopy, the loopback and the bare directory.",
			plot: cdfPlot("Filesystem: "+j.title, "latency", ds, nil)})
	}
	return r.add("Filesystem: tricopy vs go-fuse loopback vs bare directory", res.WriteMarkdown, plots)
}

// AddSubmit adds the section of `tricopy bench submit`: its table and, per
// scenario and cluster size, the latency distribution of Submit and of
// raw Raft Apply.
func (r *Report) AddSubmit(res *replbench.Results) error {
	var plots []namedPlot
	for _, c := range res.Comparisons {
		raft, submit := res.Run(c.Scenario, c.Nodes, replbench.SideRaft), res.Run(c.Scenario, c.Nodes, replbench.SideSubmit)
		var ds []dist
		if submit != nil {
			ds = append(ds, dist{"tricopy Submit", colorOurs, submit.Latency.Hist})
		}
		if raft != nil {
			ds = append(ds, dist{"raw raft Apply (yardstick)", colorYardstick, raft.Latency.Hist})
		}
		name := fmt.Sprintf("%s, %d node", c.Scenario, c.Nodes)
		if c.Nodes > 1 {
			name += "s"
		}
		plots = append(plots, namedPlot{
			file:    fmt.Sprintf("submit-%s-%dn.png", slug(c.Scenario), c.Nodes),
			caption: "Latency of a write, from the call to its acknowledgement: " + name + ".",
			plot:    cdfPlot("Submit vs raft Apply: "+name, "latency of one write", ds, nil),
		})
	}
	return r.add("Replication: Submit vs raw hashicorp/raft Apply", res.WriteMarkdown, plots)
}

// AddMirror adds the section of `tricopy bench mirror`: its tables, the
// distribution of the 4 KiB write latency on the local and the mirrored
// mounts with raw Apply's as the yardstick, and that of the fsync after
// it.
func (r *Report) AddMirror(res *mirrorbench.Results) error {
	ours := []color.RGBA{colorBare, colorOurs, colorOurs2, colorOurs3}
	yard := []color.RGBA{colorYardstick, colorYard2, plot.Red}
	var writes, fsyncs []dist
	for i, m := range res.Mounts {
		col := ours[min(i, len(ours)-1)]
		writes = append(writes, dist{m.Target, col, m.Fsync.ClatHist})
		fsyncs = append(fsyncs, dist{m.Target, col, m.Fsync.SyncHist})
	}
	for i, raw := range res.Raw {
		writes = append(writes, dist{fmt.Sprintf("raw Apply 4 KiB, %d node(s) (yardstick)", raw.Nodes), yard[min(i, len(yard)-1)], raw.Small.Latency.Hist})
	}
	plots := []namedPlot{
		{file: "mirror-write-latency.png",
			caption: "Latency of a 4 KiB write (fio fsync=1 job) on the local and the mirrored mounts, and of a raw Raft Apply of 4 KiB.",
			plot:    cdfPlot("Mirrored mount: 4 KiB write", "latency", writes, nil)},
		{file: "mirror-fsync-latency.png",
			caption: "Latency of the fsync after each 4 KiB write on the local and the mirrored mounts.",
			plot:    cdfPlot("Mirrored mount: fsync after a 4 KiB write", "latency", fsyncs, nil)},
	}
	return r.add("Mirrored mount vs local mount and raw hashicorp/raft", res.WriteMarkdown, plots)
}

// AddLag adds the section of `tricopy bench lag`: its table, the
// distribution of the lag at each load level with the p99 target, and the
// lag over time.
func (r *Report) AddLag(res *lagbench.Results) error {
	cols := []color.RGBA{colorOurs, colorOurs2, colorOurs3, plot.Red}
	light := []color.RGBA{{0x9e, 0xc9, 0xe2, 0xff}, {0x9b, 0xd8, 0x8f, 0xff}, {0xc9, 0xb3, 0xe0, 0xff}, {0xf2, 0x9e, 0x9e, 0xff}}
	var ds []dist
	over := &plot.Plot{
		Title:  "Secondary lag over time",
		X:      plot.Axis{Label: "time since the start of the load level", Format: plot.FormatSeconds},
		Y:      plot.Axis{Label: "lag", Format: plot.FormatSeconds},
		HLines: []plot.Line{{At: lagbench.TargetP99.Seconds(), Label: "p99 target", Color: plot.Red}},
		Legend: plot.LegendBelow,
	}
	lo, hi := math.Inf(1), lagbench.TargetP99.Seconds()
	for i, l := range res.Loads {
		name := fmt.Sprintf("%.0f%% load, %.0f writes/s", 100*l.Load, l.Rate)
		ds = append(ds, dist{name, cols[i%len(cols)], l.Hist})
		med := plot.Series{Name: fmt.Sprintf("%.0f%% load: median per window", 100*l.Load), Color: cols[i%len(cols)]}
		mx := plot.Series{Name: fmt.Sprintf("%.0f%% load: max per window", 100*l.Load), Color: light[i%len(light)]}
		for _, w := range l.Timeline {
			med.Points = append(med.Points, plot.Point{X: w.At.Seconds(), Y: w.P50.Seconds()})
			mx.Points = append(mx.Points, plot.Point{X: w.At.Seconds(), Y: w.Max.Seconds()})
			if w.P50 > 0 {
				lo = min(lo, w.P50.Seconds())
			}
			hi = max(hi, w.Max.Seconds())
		}
		// The maxima first, so that the medians are drawn over them.
		over.Series = append([]plot.Series{mx}, over.Series...)
		over.Series = append(over.Series, med)
	}
	over.Y.Log = lo > 0 && !math.IsInf(lo, 1) && hi/lo > 10
	target := []plot.Line{{At: lagbench.TargetP99.Seconds(), Label: "p99 target", Color: plot.Red}}
	plots := []namedPlot{
		{file: "lag-distribution.png",
			caption: "Lag from a write's return on the primary to its visibility on the secondary's mount, per load level.",
			plot:    cdfPlot("Secondary lag", "lag", ds, target)},
		{file: "lag-over-time.png",
			caption: "Lag over time: the median and the maximum lag of the writes that returned in each window.",
			plot:    over},
	}
	return r.add("Lag from a primary's write to a secondary's mount", res.WriteMarkdown, plots)
}

// AddFailover adds the section of `tricopy bench failover`: its table and
// the time from the start of promote until each promoted mount took a
// write and an fsync, with the time promote itself took and the target.
func (r *Report) AddFailover(res *failoverbench.Results) error {
	var rtos []time.Duration
	rtos = append(rtos, res.MountRTOs...)
	if len(rtos) == 0 && res.RTO > 0 {
		rtos = []time.Duration{res.RTO}
	}
	p := &plot.Plot{
		Title: fmt.Sprintf("Failover: promote of %d volumes with %.0f MiB staged", res.Volumes, float64(res.BacklogBytes)/(1<<20)),
		X:     plot.Axis{Label: "time since the start of promote", Format: plot.FormatSeconds, Log: true},
		Y:     plot.Axis{Label: "fraction of volumes writable", Min: 0, Max: 1},
		VLines: []plot.Line{
			{At: res.Promote.Seconds(), Label: "promote returned", Color: plot.Gray},
			{At: failoverbench.TargetRTO.Seconds(), Label: "RTO target", Color: plot.Red},
		},
		Legend: plot.LegendTopLeft,
	}
	if len(rtos) > 0 {
		s := plot.Series{Name: fmt.Sprintf("tricopy: RTO %s", short(res.RTO)), Color: colorOurs, Step: true}
		sorted := append([]time.Duration(nil), rtos...)
		slices.Sort(sorted)
		s.Points = append(s.Points, plot.Point{X: sorted[0].Seconds(), Y: 0})
		for i, d := range sorted {
			s.Points = append(s.Points, plot.Point{X: d.Seconds(), Y: float64(i+1) / float64(len(sorted))})
		}
		p.Series = append(p.Series, s)
		lo := math.Pow(10, math.Floor(math.Log10(min(sorted[0].Seconds(), max(res.Promote.Seconds(), 1e-3)))))
		p.X.Min, p.X.Max = lo, math.Pow(10, math.Ceil(math.Log10(max(sorted[len(sorted)-1].Seconds(), failoverbench.TargetRTO.Seconds())*1.01)))
	}
	plots := []namedPlot{{file: "failover-rto.png",
		caption: "Time from the start of promote until each promoted volume's mount took a write and an fsync; the RTO is the last.",
		plot:    p}}
	return r.add("Failover: recovery time of tricopy promote", res.WriteMarkdown, plots)
}

// slug turns a scenario name like "4 KiB × 64 writers" into a file name
// part like "4kib-x-64-writers".
func slug(s string) string {
	var b strings.Builder
	dash := false
	for _, r := range strings.ToLower(s) {
		switch {
		case r >= 'a' && r <= 'z' || r >= '0' && r <= '9':
			b.WriteRune(r)
			dash = false
		case r == '×':
			if !dash {
				b.WriteRune('-')
			}
			b.WriteString("x-")
			dash = true
		default:
			if !dash && b.Len() > 0 {
				b.WriteRune('-')
				dash = true
			}
		}
	}
	return strings.Trim(b.String(), "-")
}
