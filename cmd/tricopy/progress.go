package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"math"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tricopy/tricopy/blockdev"
	"github.com/tricopy/tricopy/blockdev/mirror"
)

// Progress bars of copies and resyncs on a terminal.
//
// A command whose standard error is a terminal (mount, up, secondary)
// starts a progressDisplay. It owns the bottom lines of the terminal: one
// bar per copy or resync running, redrawn in place at most every
// progressInterval by the display's goroutine, which polls the sources
// (mirror.Status, the secondary's initial copy). Everything else the
// command writes to the terminal goes through the display: the logger's
// handler and standard output are wrapped so that each record or write
// first erases the bars, is written, and draws them again below it. So
// log lines scroll above the bars and never share a line with them. When
// standard error is not a terminal there is no display: the logs say the
// progress (the mount's mirror watcher and the secondary's copy log it
// every 5 s).

const (
	// progressInterval is how often the display polls its sources and
	// redraws the bars: at most 5 times a second.
	progressInterval = 200 * time.Millisecond
	// progressWidth is the terminal width assumed when COLUMNS does not
	// say: lines are cut to one less, so that they never wrap.
	progressWidth = 80
	// progressBarMin and progressBarMax bound the width of the bar itself;
	// below the minimum the line has no bar.
	progressBarMin, progressBarMax = 5, 30
)

// progressSample is one reading of a progress source.
type progressSample struct {
	// Phase is what runs: "COPY" or "RESYNC"; "" when nothing does.
	Phase string
	// Done and Total count the units of the phase.
	Done, Total uint64
	// Unit names what Done and Total count ("regions").
	Unit string
	// UnitBytes is the size of a unit; 0 when unknown (Done and Total are
	// then shown as counts, not sizes).
	UnitBytes uint64
	// Bytes counts the bytes copied so far; it may count from before the
	// phase (only its growth is used, for the rate).
	Bytes uint64
	// State is the source's state, which tells how a phase ended: "PAIR"
	// when it completed.
	State string
}

// progressSource reads the progress of one volume's copies. The display's
// goroutine calls it, without holding the display's lock (a source may
// log while it holds its own lock).
type progressSource func() progressSample

// progressLine is what formatProgress shows of a running phase.
type progressLine struct {
	Name, Phase, Unit string
	UnitBytes         uint64
	Done, Total       uint64
	// DoneSince counts the units done since the phase started (the ETA
	// comes from it) and BytesSince the bytes copied (the rate).
	DoneSince, BytesSince uint64
	// Elapsed is the time since the phase started.
	Elapsed time.Duration
}

// formatProgress formats l as one line of at most width-1 characters:
// name, phase, a bar of the width left (none when too little is), percent,
// done/total, rate and ETA. Done above Total shows as Total; a Total of 0
// shows 0% and no ETA; no progress yet (a rate of 0) shows no ETA.
func formatProgress(width int, l progressLine) string {
	done := min(l.Done, l.Total)
	frac := 0.0
	if l.Total > 0 {
		frac = float64(done) / float64(l.Total)
	}
	eta := "--"
	switch secs := l.Elapsed.Seconds(); {
	case l.Total > 0 && done == l.Total:
		eta = "0s"
	case l.Total > 0 && secs > 0 && l.DoneSince > 0:
		eta = formatDuration(time.Duration(float64(l.Total-done) / (float64(l.DoneSince) / secs) * float64(time.Second)))
	}
	head := l.Name + " " + l.Phase
	tail := fmt.Sprintf(" %5.1f%% %s %s ETA %s", percent(done, l.Total), l.amount(done, l.Total), formatRate(l.BytesSince, l.Elapsed), eta)
	line := head
	if bw := min(width-1-len(head)-len(tail)-3, progressBarMax); bw >= progressBarMin {
		line += " [" + progressBar(frac, bw) + "]"
	}
	return cut(line+tail, width-1)
}

// formatProgressEnd formats the final line of a phase that ended in state
// ("PAIR": it completed; otherwise it stopped, and state, when not empty,
// says in what).
func formatProgressEnd(l progressLine, state string) string {
	head := l.Name + " " + l.Phase
	if state != "PAIR" {
		done := min(l.Done, l.Total)
		line := fmt.Sprintf("%s stopped at %.1f%% (%s)", head, percent(done, l.Total), l.amount(done, l.Total))
		if state != "" {
			line += ": " + state
		}
		return line
	}
	what := strconv.FormatUint(l.Total, 10) + " " + l.Unit
	if l.UnitBytes > 0 {
		what = formatBytes(l.Total * l.UnitBytes)
	} else if l.BytesSince > 0 {
		what += ", " + formatBytes(l.BytesSince)
	}
	return fmt.Sprintf("%s done: %s in %s (%s)", head, what, formatDuration(l.Elapsed), formatRate(l.BytesSince, l.Elapsed))
}

// percent is done in percent of total, rounded down to a tenth (so that
// 100.0 means done), 0 when total is.
func percent(done, total uint64) float64 {
	if total == 0 {
		return 0
	}
	return math.Floor(1000*float64(done)/float64(total)) / 10
}

// amount shows done and total: as sizes when the unit's size is known,
// else as counts of the unit.
func (l progressLine) amount(done, total uint64) string {
	if l.UnitBytes > 0 {
		return formatBytes(done*l.UnitBytes) + "/" + formatBytes(total*l.UnitBytes)
	}
	return fmt.Sprintf("%d/%d %s", done, total, l.Unit)
}

// progressBar draws a bar of width characters filled to frac.
func progressBar(frac float64, width int) string {
	filled := int(frac * float64(width))
	filled = max(0, min(filled, width))
	s := strings.Repeat("=", filled)
	if filled < width && frac > 0 {
		return s + ">" + strings.Repeat(" ", width-filled-1)
	}
	return s + strings.Repeat(" ", width-filled)
}

// formatRate shows bytes copied in elapsed as MiB/s, "--" when no time
// passed.
func formatRate(bytes uint64, elapsed time.Duration) string {
	if elapsed <= 0 {
		return "-- MiB/s"
	}
	return fmt.Sprintf("%.1f MiB/s", float64(bytes)/(1<<20)/elapsed.Seconds())
}

// formatBytes shows n bytes in KiB, MiB or GiB with one decimal.
func formatBytes(n uint64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	default:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
}

// formatDuration shows d to the second, compactly: 45s, 3m05s, 2h07m;
// ">99h" beyond.
func formatDuration(d time.Duration) string {
	s := int64(d.Round(time.Second) / time.Second)
	switch {
	case s < 60:
		return fmt.Sprintf("%ds", max(s, 0))
	case s < 3600:
		return fmt.Sprintf("%dm%02ds", s/60, s%60)
	case s < 100*3600:
		return fmt.Sprintf("%dh%02dm", s/3600, s%3600/60)
	default:
		return ">99h"
	}
}

// cut shortens s to at most n runes.
func cut(s string, n int) string {
	if n <= 0 {
		return ""
	}
	if r := []rune(s); len(r) > n {
		return string(r[:n])
	}
	return s
}

// progressTrack follows one source: the phase running and where it
// started. Only the display's goroutine uses it (and Close, once that
// goroutine returned).
type progressTrack struct {
	name string
	src  progressSource

	phase         string // "" when none runs
	start         time.Time
	done0, bytes0 uint64
	last          progressSample
}

// step takes the sample s read at now and returns the line to draw (""
// when no phase runs) and the final line of a phase that ended (or "").
// A phase that goes back (a new stream restarts a resync) starts over.
func (t *progressTrack) step(s progressSample, now time.Time, width int) (line, final string) {
	if t.phase != "" && s.Phase == t.phase && (s.Done < t.last.Done || s.Total != t.last.Total) {
		t.begin(s, now)
	}
	if t.phase != "" && s.Phase != t.phase {
		l := t.line(t.last, now)
		if s.State == "PAIR" {
			l.Done = l.Total
			l.BytesSince = sub(s.Bytes, t.bytes0)
		}
		final = formatProgressEnd(l, s.State)
		t.phase = ""
	}
	if t.phase == "" && s.Phase != "" {
		t.begin(s, now)
	}
	if t.phase == "" {
		return "", final
	}
	t.last = s
	return formatProgress(width, t.line(s, now)), final
}

// stop ends the track: the final line of a phase still running, or "".
func (t *progressTrack) stop(now time.Time) string {
	if t.phase == "" {
		return ""
	}
	l := t.line(t.last, now)
	t.phase = ""
	return formatProgressEnd(l, "")
}

func (t *progressTrack) begin(s progressSample, now time.Time) {
	t.phase, t.start, t.done0, t.bytes0, t.last = s.Phase, now, s.Done, s.Bytes, s
}

func (t *progressTrack) line(s progressSample, now time.Time) progressLine {
	return progressLine{
		Name: t.name, Phase: t.phase, Unit: s.Unit, UnitBytes: s.UnitBytes, Done: s.Done, Total: s.Total,
		DoneSince: sub(s.Done, t.done0), BytesSince: sub(s.Bytes, t.bytes0), Elapsed: now.Sub(t.start),
	}
}

// sub is a-b, 0 when b is larger.
func sub(a, b uint64) uint64 {
	if b > a {
		return 0
	}
	return a - b
}

// progressDisplay shows the progress bars of a command on its terminal.
// startProgress starts it (and its goroutine); the command closes it on
// its way out. A nil *progressDisplay (standard error is not a terminal)
// does nothing.
type progressDisplay struct {
	out   io.Writer // the terminal (standard error)
	width int

	mu      sync.Mutex
	tracks  []*progressTrack
	lines   []string // the bars to show
	drawn   int      // bar lines on the terminal; the cursor ends the last one
	partial bool     // the last write ended mid-line: draw nothing until it ends
	closed  bool

	cancel context.CancelFunc
	done   chan struct{} // closed when the goroutine returned
}

// startProgress starts the progress display when a's standard error is a
// terminal (and TERM is not "dumb"), and returns it with the app and
// logger the command must use from then on: their writes go through the
// display. Otherwise it returns nil, a and log unchanged.
func startProgress(a *app, log *slog.Logger) (*progressDisplay, *app, *slog.Logger) {
	f, ok := a.stderr.(*os.File)
	if !ok || !isTerminal(f) || os.Getenv("TERM") == "dumb" {
		return nil, a, log
	}
	width := progressWidth
	if n, err := strconv.Atoi(os.Getenv("COLUMNS")); err == nil && n > 0 {
		width = n
	}
	d := newProgressDisplay(a.stderr, width, progressInterval)
	wrapped := *a
	wrapped.stdout, wrapped.stderr = d.writer(a.stdout), d.writer(a.stderr)
	return d, &wrapped, slog.New(&progressHandler{h: log.Handler(), d: d})
}

// newProgressDisplay starts a display drawing on out, polling every
// interval.
func newProgressDisplay(out io.Writer, width int, interval time.Duration) *progressDisplay {
	ctx, cancel := context.WithCancel(context.Background())
	d := &progressDisplay{out: out, width: width, cancel: cancel, done: make(chan struct{})}
	go d.run(ctx, interval)
	return d
}

// track shows the progress of src, under name, from now on.
func (d *progressDisplay) track(name string, src progressSource) {
	if d == nil || src == nil {
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.closed {
		d.tracks = append(d.tracks, &progressTrack{name: name, src: src})
	}
}

// trackMirror shows the copies and resyncs of m (none if m is nil).
func (d *progressDisplay) trackMirror(name string, m *mirror.Mirror) {
	if d == nil || m == nil {
		return
	}
	d.track(name, func() progressSample {
		st := m.Status()
		s := progressSample{Bytes: st.CopiedBytes, State: string(st.State)}
		if (st.State == mirror.StateCopy || st.State == mirror.StateResync) && st.ResyncTotal > 0 {
			s.Phase, s.Done, s.Total, s.Unit = string(st.State), st.ResyncDone, st.ResyncTotal, "regions"
		}
		return s
	})
}

// trackCopy shows the initial copy of a secondary, and returns what feeds
// it: pass its callback to secondary.Config.OnCopyProgress and call its
// end once secondary.Open returned. nil without a display.
func (d *progressDisplay) trackCopy(name string) *copyProgress {
	if d == nil {
		return nil
	}
	c := &copyProgress{}
	d.track(name, c.sample)
	return c
}

// run is the display's goroutine: it polls the sources every interval
// and redraws, until ctx ends.
func (d *progressDisplay) run(ctx context.Context, interval time.Duration) {
	defer close(d.done)
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			d.poll(now)
		}
	}
}

// poll reads every source (without the lock) and shows the result.
func (d *progressDisplay) poll(now time.Time) {
	d.mu.Lock()
	tracks := slices.Clone(d.tracks)
	d.mu.Unlock()
	var lines, finals []string
	for _, t := range tracks {
		line, final := t.step(t.src(), now, d.width)
		if final != "" {
			finals = append(finals, final)
		}
		if line != "" {
			lines = append(lines, line)
		}
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if len(finals) == 0 && slices.Equal(lines, d.lines) && (d.drawn == len(lines) || d.partial) {
		return
	}
	d.showLocked(lines, finals)
}

// showLocked replaces the bars by lines, printing finals above them.
func (d *progressDisplay) showLocked(lines, finals []string) {
	var b strings.Builder
	d.eraseLocked(&b)
	if len(finals) > 0 && d.partial {
		b.WriteString("\n")
		d.partial = false
	}
	for _, f := range finals {
		b.WriteString(f + "\n")
	}
	d.lines = lines
	d.drawLocked(&b)
	_, _ = io.WriteString(d.out, b.String())
}

// eraseLocked appends to b what erases the bars: back to the start of the
// first bar line, and clear to the end of the screen.
func (d *progressDisplay) eraseLocked(b *strings.Builder) {
	if d.drawn == 0 {
		return
	}
	b.WriteString("\r")
	if d.drawn > 1 {
		fmt.Fprintf(b, "\x1b[%dA", d.drawn-1)
	}
	b.WriteString("\x1b[J")
	d.drawn = 0
}

// drawLocked appends the bars to b, the cursor left at the end of the
// last one, unless a line is unfinished.
func (d *progressDisplay) drawLocked(b *strings.Builder) {
	if d.partial || d.closed || len(d.lines) == 0 {
		return
	}
	b.WriteString(strings.Join(d.lines, "\n"))
	d.drawn = len(d.lines)
}

// around runs write, which writes to the terminal, with the bars erased;
// partial says whether it leaves a line unfinished.
func (d *progressDisplay) around(write func() (partial bool)) {
	d.mu.Lock()
	defer d.mu.Unlock()
	var b strings.Builder
	d.eraseLocked(&b)
	if b.Len() > 0 {
		_, _ = io.WriteString(d.out, b.String())
	}
	d.partial = write()
	b.Reset()
	d.drawLocked(&b)
	if b.Len() > 0 {
		_, _ = io.WriteString(d.out, b.String())
	}
}

// writer returns w with every write going through the display.
func (d *progressDisplay) writer(w io.Writer) io.Writer {
	return &progressWriter{w: w, d: d}
}

// Close stops the display's goroutine and waits for it, prints the final
// line of every phase still running, and erases the bars. Writes through
// the display go straight to the terminal afterwards.
func (d *progressDisplay) Close() {
	if d == nil {
		return
	}
	d.cancel()
	<-d.done
	d.mu.Lock()
	defer d.mu.Unlock()
	var finals []string
	now := time.Now()
	for _, t := range d.tracks {
		if f := t.stop(now); f != "" {
			finals = append(finals, f)
		}
	}
	d.showLocked(nil, finals)
	d.closed = true
}

// progressWriter is a writer to the terminal that keeps clear of the
// bars.
type progressWriter struct {
	w io.Writer
	d *progressDisplay
}

// Write writes p with the bars erased, and draws them again after it
// when p ends a line.
func (w *progressWriter) Write(p []byte) (n int, err error) {
	w.d.around(func() bool {
		n, err = w.w.Write(p)
		if len(p) == 0 {
			return w.d.partial
		}
		return p[len(p)-1] != '\n'
	})
	return n, err
}

// progressHandler is a slog.Handler writing each record, through h, with
// the bars erased.
type progressHandler struct {
	h slog.Handler
	d *progressDisplay
}

// Enabled reports whether h handles records at level.
func (h *progressHandler) Enabled(ctx context.Context, level slog.Level) bool {
	return h.h.Enabled(ctx, level)
}

// Handle writes r with the bars erased, then draws them again.
func (h *progressHandler) Handle(ctx context.Context, r slog.Record) (err error) {
	h.d.around(func() bool {
		err = h.h.Handle(ctx, r)
		return false // a record is whole lines
	})
	return err
}

// WithAttrs returns the handler with attrs added.
func (h *progressHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	return &progressHandler{h: h.h.WithAttrs(attrs), d: h.d}
}

// WithGroup returns the handler with the group opened.
func (h *progressHandler) WithGroup(name string) slog.Handler {
	return &progressHandler{h: h.h.WithGroup(name), d: h.d}
}

// copyProgress is the progress source of a secondary's initial copy, fed
// by secondary.Config.OnCopyProgress.
type copyProgress struct {
	done, total atomic.Uint64
	running     atomic.Bool
	state       atomic.Value // string: how the copy ended; nil while it runs
}

// callback is the secondary.Config.OnCopyProgress feeding c; nil when c is.
func (c *copyProgress) callback() func(done, total uint64) {
	if c == nil {
		return nil
	}
	return func(done, total uint64) {
		c.total.Store(total)
		c.done.Store(done)
		c.running.Store(true)
	}
}

// end says that secondary.Open returned, with err.
func (c *copyProgress) end(err error) {
	if c == nil {
		return
	}
	if err != nil {
		c.state.Store("failed")
	} else {
		c.state.Store("PAIR")
	}
	c.running.Store(false)
}

func (c *copyProgress) sample() progressSample {
	s := progressSample{Done: c.done.Load(), Total: c.total.Load(), Unit: "blocks", UnitBytes: blockdev.BlockSize}
	s.Bytes = s.Done * blockdev.BlockSize
	if st, ok := c.state.Load().(string); ok {
		s.State = st
	}
	if c.running.Load() {
		s.Phase = "COPY"
	}
	return s
}
