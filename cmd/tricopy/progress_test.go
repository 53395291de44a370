package main

import (
	"bytes"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestProgressFormat(t *testing.T) {
	base := progressLine{Name: "a", Phase: "RESYNC", Unit: "regions"}
	with := func(f func(l *progressLine)) progressLine {
		l := base
		f(&l)
		return l
	}
	tests := []struct {
		name  string
		width int
		l     progressLine
		want  string
	}{
		{"half way", 80, with(func(l *progressLine) {
			l.Done, l.Total, l.DoneSince, l.BytesSince, l.Elapsed = 50, 100, 50, 50<<20, 10*time.Second
		}), "a RESYNC [==============>             ]  50.0% 50/100 regions 5.0 MiB/s ETA 10s"},
		{"from a resumed point", 80, with(func(l *progressLine) {
			// 90 done, 30 of them in 60 s: 10 left at 0.5/s.
			l.Done, l.Total, l.DoneSince, l.BytesSince, l.Elapsed = 90, 100, 30, 30<<20, time.Minute
		}), "a RESYNC [=========================>  ]  90.0% 90/100 regions 0.5 MiB/s ETA 20s"},
		{"total 0", 80, with(func(l *progressLine) { l.Elapsed = time.Second }),
			"a RESYNC [                              ]   0.0% 0/0 regions 0.0 MiB/s ETA --"},
		{"done beyond total", 80, with(func(l *progressLine) {
			l.Done, l.Total, l.DoneSince, l.BytesSince, l.Elapsed = 120, 100, 120, 1<<20, time.Second
		}), "a RESYNC [============================] 100.0% 100/100 regions 1.0 MiB/s ETA 0s"},
		{"rate 0: nothing done yet", 80, with(func(l *progressLine) { l.Total, l.Elapsed = 100, 5*time.Second }),
			"a RESYNC [                              ]   0.0% 0/100 regions 0.0 MiB/s ETA --"},
		{"no time elapsed", 80, with(func(l *progressLine) { l.Done, l.Total, l.DoneSince = 10, 100, 10 }),
			"a RESYNC [===>                          ]  10.0% 10/100 regions -- MiB/s ETA --"},
		{"sizes and a long ETA", 80, progressLine{Name: "b (secondary)", Phase: "COPY", Unit: "blocks", UnitBytes: 4096,
			Done: 1 << 16, Total: 1 << 18, DoneSince: 1 << 16, BytesSince: 1 << 28, Elapsed: 4 * time.Hour},
			"b (secondary) COPY [===>        ]  25.0% 256.0 MiB/1.0 GiB 0.0 MiB/s ETA 12h00m"},
		{"narrow: a shorter bar", 60, with(func(l *progressLine) {
			l.Done, l.Total, l.DoneSince, l.BytesSince, l.Elapsed = 50, 100, 50, 50<<20, 10*time.Second
		}), "a RESYNC [====>   ]  50.0% 50/100 regions 5.0 MiB/s ETA 10s"},
		{"too narrow for a bar", 50, with(func(l *progressLine) {
			l.Done, l.Total, l.DoneSince, l.BytesSince, l.Elapsed = 50, 100, 50, 50<<20, 10*time.Second
		}), "a RESYNC  50.0% 50/100 regions 5.0 MiB/s ETA 10s"},
		{"almost done is not 100%", 80, with(func(l *progressLine) { l.Done, l.Total = 32766, 32768 }),
			"a RESYNC [========================>]  99.9% 32766/32768 regions -- MiB/s ETA --"},
		{"cut to the width", 20, with(func(l *progressLine) { l.Done, l.Total = 50, 100 }), "a RESYNC  50.0% 50/"},
		{"no width", 0, with(func(l *progressLine) { l.Done, l.Total = 50, 100 }), ""},
		{"ETA beyond 99 hours", 80, with(func(l *progressLine) {
			l.Done, l.Total, l.DoneSince, l.Elapsed = 1, 1000000, 1, time.Hour
		}), "a RESYNC [>                       ]   0.0% 1/1000000 regions 0.0 MiB/s ETA >99h"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := formatProgress(tt.width, tt.l)
			if got != tt.want {
				t.Errorf("formatProgress(%d, %+v)\n got %q\nwant %q", tt.width, tt.l, got, tt.want)
			}
			if n := len([]rune(got)); tt.width > 0 && n > tt.width-1 {
				t.Errorf("line of %d characters for width %d: it would wrap", n, tt.width)
			}
		})
	}
}

func TestProgressFormatEnd(t *testing.T) {
	l := progressLine{Name: "a", Phase: "COPY", Unit: "regions", Done: 40, Total: 100, DoneSince: 40, BytesSince: 160 << 20, Elapsed: 75 * time.Second}
	tests := []struct {
		name, state string
		l           progressLine
		want        string
	}{
		{"completed", "PAIR", l, "a COPY done: 100 regions, 160.0 MiB in 1m15s (2.1 MiB/s)"},
		{"suspended", "SUSP", l, "a COPY stopped at 40.0% (40/100 regions): SUSP"},
		{"stopped", "", l, "a COPY stopped at 40.0% (40/100 regions)"},
		{"nothing to copy", "", progressLine{Name: "a", Phase: "COPY", Unit: "regions"}, "a COPY stopped at 0.0% (0/0 regions)"},
		{"sizes", "PAIR", progressLine{Name: "a (secondary)", Phase: "COPY", Unit: "blocks", UnitBytes: 4096, Done: 256, Total: 256,
			BytesSince: 1 << 20, Elapsed: 0}, "a (secondary) COPY done: 1.0 MiB in 0s (-- MiB/s)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := formatProgressEnd(tt.l, tt.state); got != tt.want {
				t.Errorf("formatProgressEnd(%+v, %q)\n got %q\nwant %q", tt.l, tt.state, got, tt.want)
			}
		})
	}
}

func TestProgressFormatDuration(t *testing.T) {
	for d, want := range map[time.Duration]string{
		-time.Second: "0s", 0: "0s", 1499 * time.Millisecond: "1s", 59 * time.Second: "59s", time.Minute: "1m00s",
		3599 * time.Second: "59m59s", time.Hour: "1h00m", 99*time.Hour + 59*time.Minute: "99h59m", 100 * time.Hour: ">99h",
	} {
		if got := formatDuration(d); got != want {
			t.Errorf("formatDuration(%v) = %q, want %q", d, got, want)
		}
	}
}

// TestProgressTrack drives a track through a resync that restarts, ends
// in PAIR, starts again and is suspended.
func TestProgressTrack(t *testing.T) {
	tr := &progressTrack{name: "a"}
	t0 := time.Unix(1000, 0)
	at := func(s int) time.Time { return t0.Add(time.Duration(s) * time.Second) }
	resync := func(done, total, bytes uint64) progressSample {
		return progressSample{Phase: "RESYNC", Done: done, Total: total, Unit: "regions", Bytes: bytes, State: "RESYNC"}
	}
	steps := []struct {
		s           progressSample
		at          int
		line, final string
	}{
		{progressSample{State: "PAIR", Bytes: 7 << 20}, 0, "", ""},
		{resync(0, 10, 7<<20), 1, "a RESYNC [                              ]   0.0% 0/10 regions -- MiB/s ETA --", ""},
		{resync(5, 10, 8<<20), 3, "a RESYNC [===============>              ]  50.0% 5/10 regions 0.5 MiB/s ETA 2s", ""},
		// A new stream: the resync starts over, with the regions left.
		{resync(0, 8, 8<<20), 4, "a RESYNC [                              ]   0.0% 0/8 regions -- MiB/s ETA --", ""},
		{resync(4, 8, 10<<20), 6, "a RESYNC [===============>              ]  50.0% 4/8 regions 1.0 MiB/s ETA 2s", ""},
		{progressSample{State: "PAIR", Bytes: 12 << 20}, 8, "", "a RESYNC done: 8 regions, 4.0 MiB in 4s (1.0 MiB/s)"},
		{progressSample{State: "PAIR", Bytes: 12 << 20}, 9, "", ""},
		{resync(0, 4, 12<<20), 10, "a RESYNC [                              ]   0.0% 0/4 regions -- MiB/s ETA --", ""},
		{progressSample{State: "SUSP", Bytes: 12 << 20}, 11, "", "a RESYNC stopped at 0.0% (0/4 regions): SUSP"},
		{resync(1, 4, 13<<20), 12, "a RESYNC [=======>                      ]  25.0% 1/4 regions -- MiB/s ETA --", ""},
	}
	for i, st := range steps {
		line, final := tr.step(st.s, at(st.at), 80)
		if line != st.line || final != st.final {
			t.Fatalf("step %d (%+v at %ds):\n got line %q final %q\nwant line %q final %q", i, st.s, st.at, line, final, st.line, st.final)
		}
	}
	if got, want := tr.stop(at(13)), "a RESYNC stopped at 25.0% (1/4 regions)"; got != want {
		t.Errorf("stop: %q, want %q", got, want)
	}
	if got := tr.stop(at(14)); got != "" {
		t.Errorf("stop again: %q, want nothing", got)
	}
}

// testDisplay is a display without its goroutine: the test polls.
func testDisplay(out *bytes.Buffer) *progressDisplay {
	done := make(chan struct{})
	close(done)
	return &progressDisplay{out: out, width: 80, cancel: func() {}, done: done}
}

// TestProgressDisplay checks what the display writes to the terminal
// around log records and standard output writes.
func TestProgressDisplay(t *testing.T) {
	var out bytes.Buffer
	d := testDisplay(&out)
	var mu sync.Mutex
	sample := progressSample{State: "PAIR"}
	set := func(s progressSample) {
		mu.Lock()
		defer mu.Unlock()
		sample = s
	}
	src := func() progressSample {
		mu.Lock()
		defer mu.Unlock()
		return sample
	}
	d.track("a", src)
	d.track("b", func() progressSample {
		return progressSample{Phase: "COPY", Done: 1, Total: 2, Unit: "regions", State: "COPY"}
	})
	log := slog.New(&progressHandler{h: slog.NewTextHandler(&out, &slog.HandlerOptions{
		ReplaceAttr: func(_ []string, a slog.Attr) slog.Attr {
			if a.Key == slog.TimeKey {
				return slog.Attr{}
			}
			return a
		},
	}), d: d}).With("cmd", "mount")
	stdout := d.writer(&out)
	t0 := time.Unix(1000, 0)
	take := func() string {
		s := out.String()
		out.Reset()
		return s
	}
	const (
		barA  = "a RESYNC [                              ]   0.0% 0/4 regions -- MiB/s ETA --"
		barB0 = "b COPY [===============>              ]  50.0% 1/2 regions -- MiB/s ETA --"
		// Once time passed: b copied nothing since the display started.
		barB = "b COPY [===============>              ]  50.0% 1/2 regions 0.0 MiB/s ETA --"
	)

	d.poll(t0)
	if got := take(); got != barB0 {
		t.Fatalf("first poll wrote %q, want the bar of b", got)
	}
	d.poll(t0)
	if got := take(); got != "" {
		t.Fatalf("a poll with nothing changed wrote %q", got)
	}
	set(progressSample{Phase: "RESYNC", Total: 4, Unit: "regions", State: "RESYNC"})
	d.poll(t0.Add(time.Second))
	if got, want := take(), "\r\x1b[J"+barA+"\n"+barB; got != want {
		t.Fatalf("poll with two bars wrote %q, want %q", got, want)
	}
	log.Info("hello", "volume", "a")
	if got, want := take(), "\r\x1b[1A\x1b[J"+"level=INFO msg=hello cmd=mount volume=a\n"+barA+"\n"+barB; got != want {
		t.Fatalf("a log record wrote %q, want %q", got, want)
	}
	// A line written in two pieces: the bars wait for its end.
	if _, err := stdout.Write([]byte("mounted ")); err != nil {
		t.Fatal(err)
	}
	if got, want := take(), "\r\x1b[1A\x1b[J"+"mounted "; got != want {
		t.Fatalf("half a line wrote %q, want %q", got, want)
	}
	d.poll(t0.Add(2 * time.Second))
	if got := take(); got != "" {
		t.Fatalf("a poll after half a line wrote %q", got)
	}
	if _, err := stdout.Write([]byte("volume a\n")); err != nil {
		t.Fatal(err)
	}
	// The poll meanwhile updated the bars.
	barA2 := strings.Replace(barA, "-- MiB/s", "0.0 MiB/s", 1)
	if got, want := take(), "volume a\n"+barA2+"\n"+barB; got != want {
		t.Fatalf("the end of the line wrote %q, want %q", got, want)
	}
	set(progressSample{State: "PAIR", Bytes: 1 << 20})
	d.poll(t0.Add(3 * time.Second))
	if got, want := take(), "\r\x1b[1A\x1b[J"+"a RESYNC done: 4 regions, 1.0 MiB in 2s (0.5 MiB/s)\n"+barB; got != want {
		t.Fatalf("the end of a's resync wrote %q, want %q", got, want)
	}
	d.Close()
	if got, want := take(), "\r\x1b[J"+"b COPY stopped at 50.0% (1/2 regions)\n"; got != want {
		t.Fatalf("Close wrote %q, want %q", got, want)
	}
	log.Info("after")
	if got, want := take(), "level=INFO msg=after cmd=mount\n"; got != want {
		t.Fatalf("a record after Close wrote %q, want %q", got, want)
	}
}

// TestProgressDisplayRun runs the display's goroutine against a source
// that moves, with log records written concurrently (run with -race),
// and checks that Close stops it and leaves the terminal clean.
func TestProgressDisplayRun(t *testing.T) {
	var out syncBuffer
	d := newProgressDisplay(&out, 80, time.Millisecond)
	c := d.trackCopy("a")
	cb := c.callback()
	log := slog.New(&progressHandler{h: slog.NewTextHandler(&out, nil), d: d})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := range 50 {
			log.Info("record", "i", i)
			time.Sleep(time.Millisecond)
		}
	}()
	for i := range uint64(64) {
		cb(i, 64)
		time.Sleep(time.Millisecond)
	}
	cb(64, 64)
	c.end(nil)
	wg.Wait()
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(out.String(), "a COPY done: 256.0 KiB in ") {
		if time.Now().After(deadline) {
			t.Fatalf("no final line after the copy ended; wrote:\n%q", out.String())
		}
		time.Sleep(time.Millisecond)
	}
	d.Close()
	s := out.String()
	if !strings.Contains(s, "a COPY [") {
		t.Errorf("no bar drawn; wrote:\n%q", s)
	}
	if n := strings.Count(s, "msg=record"); n != 50 {
		t.Errorf("%d records written, want 50", n)
	}
	for _, line := range strings.Split(s, "\n") {
		// A record never starts after a bar on its line.
		if i := strings.Index(line, "time="); i > 0 && !strings.HasSuffix(line[:i], "\x1b[J") {
			t.Errorf("a record shares its line with something: %q", line)
		}
	}
	if !strings.HasSuffix(s, "\n") {
		t.Errorf("Close left the cursor after a bar: the output ends with %q", s[max(0, len(s)-40):])
	}
}

func TestProgressCopyFailed(t *testing.T) {
	var out bytes.Buffer
	d := testDisplay(&out)
	c := d.trackCopy("a (secondary)")
	c.callback()(16, 64)
	d.poll(time.Unix(1000, 0))
	c.end(errors.New("boom"))
	d.poll(time.Unix(1001, 0))
	if got, want := out.String(), "\r\x1b[Ja (secondary) COPY stopped at 25.0% (64.0 KiB/256.0 KiB): failed\n"; !strings.HasSuffix(got, want) {
		t.Errorf("wrote %q, want it to end with %q", got, want)
	}
}

func TestProgressNil(t *testing.T) {
	var d *progressDisplay
	d.track("a", func() progressSample { return progressSample{} })
	d.trackMirror("a", nil)
	c := d.trackCopy("a")
	if c != nil || c.callback() != nil {
		t.Fatal("a nil display gave a copy progress")
	}
	c.end(nil)
	d.Close()
	var buf bytes.Buffer
	a := &app{stdout: &buf, stderr: &buf}
	log := slog.New(slog.NewTextHandler(&buf, nil))
	got, ga, glog := startProgress(a, log)
	if got != nil || ga != a || glog != log {
		t.Fatal("startProgress started a display on a buffer")
	}
}
