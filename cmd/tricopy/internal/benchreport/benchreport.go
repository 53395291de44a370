// Package benchreport writes the report of `tricopy bench NAME --report
// DIR` and `tricopy bench all --report DIR`: DIR/README.md holds the
// machine the benchmarks ran on, the command line, and each benchmark's
// markdown tables (the ones it prints), each followed by its plots,
// PNG files in DIR: the latency distributions of tricopy and its
// yardstick on the same axes, and the secondary's lag over time.
//
// A Report is used by one goroutine. It rewrites README.md after every
// section it is given, so that a benchmark that fails after others have
// run leaves their part of the report.
package benchreport

import (
	"bytes"
	"errors"
	"fmt"
	"image/color"
	"io"
	"math"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/tricopy/tricopy/cmd/tricopy/internal/benchutil"
	"github.com/tricopy/tricopy/cmd/tricopy/internal/plot"
)

// ReadmeName is the name of the report's markdown file.
const ReadmeName = "README.md"

// Report is a report directory being written.
type Report struct {
	dir      string
	machine  benchutil.Machine
	command  string
	sections []section
}

// section is one benchmark's part of the report.
type section struct {
	title    string
	markdown string // the benchmark's tables, or its error
	plots    []plotFile
}

// plotFile is a plot written to the report directory.
type plotFile struct {
	file    string // name in the report directory
	caption string // alt text and the line under it
}

// New creates the report directory dir (if missing) and returns a report
// describing this machine and the filesystem of scratch, the benchmarks'
// scratch directory, and naming the command line args.
func New(dir, scratch string, args []string) (*Report, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("create report dir: %w", err)
	}
	return &Report{dir: dir, machine: benchutil.DescribeMachine(scratch), command: shellQuote(args)}, nil
}

// Dir returns the report directory.
func (r *Report) Dir() string { return r.dir }

// Readme returns the path of the report's README.md.
func (r *Report) Readme() string { return filepath.Join(r.dir, ReadmeName) }

// AddFailure adds a section saying that the benchmark name failed with
// err, and rewrites README.md.
func (r *Report) AddFailure(name string, err error) error {
	r.sections = append(r.sections, section{title: name, markdown: fmt.Sprintf("The benchmark failed: `%v`\n", err)})
	return r.Write()
}

// add renders the tables of a benchmark with markdown and its plots, adds
// them as a section and rewrites README.md. A plot without data is left
// out; any other error of a plot fails add.
func (r *Report) add(title string, markdown func(io.Writer) error, plots []namedPlot) error {
	var buf bytes.Buffer
	if err := markdown(&buf); err != nil {
		return fmt.Errorf("report %s: %w", title, err)
	}
	s := section{title: title, markdown: buf.String()}
	for _, p := range plots {
		err := p.plot.SavePNG(filepath.Join(r.dir, p.file))
		if errors.Is(err, plot.ErrNoData) {
			continue
		}
		if err != nil {
			return fmt.Errorf("report %s: plot %s: %w", title, p.file, err)
		}
		s.plots = append(s.plots, plotFile{file: p.file, caption: p.caption})
	}
	r.sections = append(r.sections, s)
	return r.Write()
}

// namedPlot is a plot to write under a file name, with a caption.
type namedPlot struct {
	file    string
	caption string
	plot    *plot.Plot
}

// Write writes README.md: the machine, the command, and every section
// added so far.
func (r *Report) Write() error {
	var b strings.Builder
	fmt.Fprintf(&b, "# tricopy benchmark report\n\n")
	fmt.Fprintf(&b, "Command: `%s`\n\n", r.command)
	fmt.Fprintf(&b, "Machine:\n\n%s\n", r.machine.Markdown())
	fmt.Fprintf(&b, "Every benchmark compares tricopy with a yardstick run in the same invocation on the same disk "+
		"(DESIGN.md section 8). In the latency plots each curve is a cumulative distribution: the fraction of "+
		"operations that took at most the time on the x axis; dots mark each curve's p50 and p99, and the legend "+
		"gives their values. Other processes on the machine show in the figures as noise.\n\n")
	for _, s := range r.sections {
		fmt.Fprintf(&b, "## %s\n\n", s.title)
		b.WriteString(demoteHeadings(strings.TrimSpace(s.markdown)))
		b.WriteString("\n\n")
		for _, p := range s.plots {
			fmt.Fprintf(&b, "![%s](%s)\n\n%s\n\n", p.caption, p.file, p.caption)
		}
	}
	if err := os.WriteFile(r.Readme(), []byte(b.String()), 0o644); err != nil {
		return fmt.Errorf("write report: %w", err)
	}
	return nil
}

// demoteHeadings makes the "## " headings a benchmark prints "### ", so
// that they sit under the section's heading.
func demoteHeadings(md string) string {
	lines := strings.Split(md, "\n")
	for i, l := range lines {
		if strings.HasPrefix(l, "#") {
			lines[i] = "#" + l
		}
	}
	return strings.Join(lines, "\n")
}

// shellQuote returns args as a shell command line.
func shellQuote(args []string) string {
	out := make([]string, len(args))
	for i, a := range args {
		if a != "" && strings.IndexFunc(a, func(r rune) bool {
			return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("-_./=:,@%+", r))
		}) < 0 {
			out[i] = a
			continue
		}
		out[i] = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
	}
	return strings.Join(out, " ")
}

// Colours of the report's curves: tricopy's in blues and greens, the
// yardsticks' in oranges, the bare disk in gray.
var (
	colorOurs      = plot.Blue
	colorOurs2     = plot.Green
	colorOurs3     = plot.Purple
	colorYardstick = plot.Orange
	colorYard2     = plot.Brown
	colorBare      = plot.Gray
)

// dist is a latency distribution to draw.
type dist struct {
	name  string
	color color.RGBA
	hist  benchutil.Histogram
}

// seconds returns d in seconds.
func seconds(d time.Duration) float64 { return d.Seconds() }

// short formats d for a legend: three significant digits.
func short(d time.Duration) string { return plot.FormatSeconds(d.Seconds()) }

// cdfPlot returns a plot of the cumulative distributions of ds (those with
// samples), with their p50 and p99 marked and given in the legend, on a
// log x axis when they span more than a decade. vlines are reference
// lines, such as a target.
func cdfPlot(title, xLabel string, ds []dist, vlines []plot.Line) *plot.Plot {
	p := &plot.Plot{
		Title:  title,
		X:      plot.Axis{Label: xLabel, Format: plot.FormatSeconds},
		Y:      plot.Axis{Label: "fraction of operations <= x", Min: 0, Max: 1},
		Legend: plot.LegendBelow,
		HLines: []plot.Line{{At: 0.5}, {At: 0.99}},
		VLines: vlines,
	}
	lo, hi := math.Inf(1), 0.0
	for _, d := range ds {
		total := d.hist.Count()
		if total == 0 {
			continue
		}
		p50, p99 := d.hist.Quantile(0.5), d.hist.Quantile(0.99)
		s := plot.Series{
			Name:  fmt.Sprintf("%s: p50 %s, p99 %s", d.name, short(p50), short(p99)),
			Color: d.color,
			Step:  true,
			Marks: []plot.Mark{{X: seconds(p50), Y: 0.5, Label: "p50"}, {X: seconds(p99), Y: 0.99, Label: "p99"}},
		}
		var seen int64
		for i, b := range d.hist.Bins {
			if i == 0 {
				s.Points = append(s.Points, plot.Point{X: seconds(b.Value), Y: 0})
			}
			seen += b.Count
			s.Points = append(s.Points, plot.Point{X: seconds(b.Value), Y: float64(seen) / float64(total)})
		}
		first, last := d.hist.Bins[0].Value, d.hist.Bins[len(d.hist.Bins)-1].Value
		if first > 0 {
			lo = min(lo, seconds(first))
		}
		hi = max(hi, seconds(last))
		p.Series = append(p.Series, s)
	}
	for _, l := range vlines {
		hi = max(hi, l.At)
	}
	p.X.Log = lo > 0 && !math.IsInf(lo, 1) && hi/lo > 10
	return p
}
