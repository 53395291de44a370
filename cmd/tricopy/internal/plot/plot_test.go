package plot

import (
	"bytes"
	"errors"
	"image"
	"image/color"
	"image/png"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// render renders p, decodes the PNG it writes, and returns the image.
func render(t *testing.T, p *Plot) image.Image {
	t.Helper()
	var buf bytes.Buffer
	if err := p.WritePNG(&buf); err != nil {
		t.Fatalf("WritePNG: %v", err)
	}
	img, err := png.Decode(&buf)
	if err != nil {
		t.Fatalf("decode the PNG: %v", err)
	}
	return img
}

func rgba(c color.Color) color.RGBA {
	r, g, b, a := c.RGBA()
	return color.RGBA{R: uint8(r >> 8), G: uint8(g >> 8), B: uint8(b >> 8), A: uint8(a >> 8)}
}

func TestSize(t *testing.T) {
	pts := []Point{{1, 1}, {2, 3}}
	for _, tt := range []struct{ w, h, wantW, wantH int }{
		{0, 0, DefaultWidth, DefaultHeight},
		{640, 300, 640, 300},
	} {
		img := render(t, &Plot{Width: tt.w, Height: tt.h, Series: []Series{{Points: pts}}})
		if b := img.Bounds(); b.Dx() != tt.wantW || b.Dy() != tt.wantH {
			t.Errorf("size %dx%d: got an image of %dx%d, want %dx%d", tt.w, tt.h, b.Dx(), b.Dy(), tt.wantW, tt.wantH)
		}
	}
}

// TestSeriesPixels draws a horizontal and a vertical segment on fixed axes
// and checks that their colours are where the axes put them, and nowhere
// far from there.
func TestSeriesPixels(t *testing.T) {
	p := &Plot{
		Width: 400, Height: 300,
		X: Axis{Min: 0, Max: 10}, Y: Axis{Min: 0, Max: 1},
		Series: []Series{
			{Color: Blue, Points: []Point{{2, 0.5}, {8, 0.5}}},   // horizontal at mid height
			{Color: Orange, Points: []Point{{5, 0.1}, {5, 0.3}}}, // vertical at mid width, low
		},
	}
	img := render(t, p)
	a := frame(img.Bounds())
	at := func(x, y float64) image.Point { // data to pixel, as the renderer maps
		return image.Pt(a.Min.X+int(math.Round(x/10*float64(a.Dx()-1))), a.Max.Y-1-int(math.Round(y*float64(a.Dy()-1))))
	}
	for _, x := range []float64{2.5, 4, 6, 7.5} {
		if q := at(x, 0.5); rgba(img.At(q.X, q.Y)) != Blue {
			t.Errorf("pixel %v of (%v, 0.5) is %v, want the blue series", q, x, rgba(img.At(q.X, q.Y)))
		}
	}
	for _, y := range []float64{0.15, 0.2, 0.25} {
		if q := at(5, y); rgba(img.At(q.X, q.Y)) != Orange {
			t.Errorf("pixel %v of (5, %v) is %v, want the orange series", q, y, rgba(img.At(q.X, q.Y)))
		}
	}
	// Every blue pixel is on the segment (±2 pixels: the pen is 2 wide).
	lo, hi := at(2, 0.5), at(8, 0.5)
	n := 0
	for y := img.Bounds().Min.Y; y < img.Bounds().Max.Y; y++ {
		for x := img.Bounds().Min.X; x < img.Bounds().Max.X; x++ {
			if rgba(img.At(x, y)) != Blue {
				continue
			}
			n++
			if x < lo.X-2 || x > hi.X+2 || y < lo.Y-2 || y > lo.Y+2 {
				t.Fatalf("blue pixel at (%d, %d), off the segment from %v to %v", x, y, lo, hi)
			}
		}
	}
	if n < hi.X-lo.X {
		t.Errorf("%d blue pixels, want at least the segment's length %d", n, hi.X-lo.X)
	}
}

func TestLegendAndMarks(t *testing.T) {
	p := &Plot{
		Width: 400, Height: 300,
		X: Axis{Min: 0, Max: 10}, Y: Axis{Min: 0, Max: 1},
		Series: []Series{{Name: "tricopy", Color: Green, Points: []Point{{1, 0.1}, {2, 0.2}},
			Marks: []Mark{{X: 6, Y: 0.6, Label: "p50"}}}},
		Legend: LegendBottomRight,
	}
	img := render(t, p)
	a := frame(img.Bounds())
	count := func(r image.Rectangle) int {
		n := 0
		for y := r.Min.Y; y < r.Max.Y; y++ {
			for x := r.Min.X; x < r.Max.X; x++ {
				if rgba(img.At(x, y)) == Green {
					n++
				}
			}
		}
		return n
	}
	// The legend's swatch is in the bottom right quarter of the plot area.
	if n := count(image.Rect(a.Min.X+a.Dx()/2, a.Min.Y+a.Dy()/2, a.Max.X, a.Max.Y)); n == 0 {
		t.Errorf("no legend swatch in the bottom right quarter")
	}
	// The mark's dot is at (6, 0.6).
	mx := a.Min.X + int(math.Round(0.6*float64(a.Dx()-1)))
	my := a.Max.Y - 1 - int(math.Round(0.6*float64(a.Dy()-1)))
	if n := count(image.Rect(mx-2, my-2, mx+3, my+3)); n != 25 {
		t.Errorf("%d of the 25 pixels around the mark at (%d, %d) are green, want all", n, mx, my)
	}
}

func TestLogTicks(t *testing.T) {
	s := scale{lo: 1e-4, hi: 1e-1, log: true}
	var major []float64
	minor := 0
	for _, tk := range s.ticks() {
		if tk.major {
			major = append(major, tk.v)
		} else {
			minor++
		}
	}
	want := []float64{1e-4, 1e-3, 1e-2, 1e-1}
	if len(major) != len(want) {
		t.Fatalf("major ticks %v, want %v", major, want)
	}
	for i := range want {
		if math.Abs(major[i]-want[i]) > want[i]*1e-9 {
			t.Fatalf("major ticks %v, want %v", major, want)
		}
	}
	if minor != 3*8 {
		t.Errorf("%d minor ticks, want 24 (2..9 in three decades)", minor)
	}
	// Powers of ten are evenly spaced: each decade a third of the axis.
	for i, v := range want {
		if f, _ := s.pos(v); math.Abs(f-float64(i)/3) > 1e-9 {
			t.Errorf("position of %g is %v, want %v", v, f, float64(i)/3)
		}
	}
	if f, _ := s.pos(2e-4); math.Abs(f-math.Log10(2)/3) > 1e-9 {
		t.Errorf("position of 2e-4 is %v, want log10(2)/3", f)
	}

	// Under two decades, 2x and 5x are labelled too.
	short := scale{lo: 1e-3, hi: 1e-2, log: true}
	var got []float64
	for _, tk := range short.ticks() {
		if tk.major {
			got = append(got, tk.v)
		}
	}
	if len(got) != 4 || math.Abs(got[1]-2e-3) > 1e-12 || math.Abs(got[2]-5e-3) > 1e-12 {
		t.Errorf("labelled ticks of one decade: %v, want 1, 2, 5, 10 ms", got)
	}
}

func TestAutoLogRange(t *testing.T) {
	s, err := axisScale(Axis{Log: true}, []float64{150e-6, 40e-3}, "x")
	if err != nil {
		t.Fatal(err)
	}
	if math.Abs(s.lo-1e-4) > 1e-12 || math.Abs(s.hi-1e-1) > 1e-12 {
		t.Errorf("range %g..%g, want 1e-4..1e-1", s.lo, s.hi)
	}
}

func TestLinearTicks(t *testing.T) {
	s := scale{lo: 0, hi: 1}
	var got []float64
	for _, tk := range s.ticks() {
		got = append(got, tk.v)
		if l := s.label(tk.v); len(l) > 4 {
			t.Errorf("label %q of tick %v is long: float noise?", l, tk.v)
		}
	}
	want := []float64{0, 0.2, 0.4, 0.6, 0.8, 1}
	if len(got) != len(want) {
		t.Fatalf("ticks %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("ticks %v, want %v", got, want)
		}
	}
}

func TestNoData(t *testing.T) {
	for name, p := range map[string]*Plot{
		"no series":             {},
		"empty series":          {Series: []Series{{Name: "a"}}},
		"nothing positive, log": {X: Axis{Log: true}, Series: []Series{{Points: []Point{{0, 1}, {-1, 2}}}}},
	} {
		if _, err := p.Image(); !errors.Is(err, ErrNoData) {
			t.Errorf("%s: got %v, want ErrNoData", name, err)
		}
		if err := p.WritePNG(&bytes.Buffer{}); !errors.Is(err, ErrNoData) {
			t.Errorf("%s: WritePNG got %v, want ErrNoData", name, err)
		}
	}
}

func TestBadPlot(t *testing.T) {
	pts := []Series{{Points: []Point{{1, 1}, {2, 2}}}}
	for name, p := range map[string]*Plot{
		"tiny":          {Width: 50, Height: 50, Series: pts},
		"inverted axis": {X: Axis{Min: 2, Max: 1}, Series: pts},
		"log from zero": {X: Axis{Log: true, Min: 0, Max: 10}, Series: pts},
		"NaN":           {Series: []Series{{Points: []Point{{math.NaN(), 1}}}}},
	} {
		if _, err := p.Image(); !errors.Is(err, ErrBadPlot) {
			t.Errorf("%s: got %v, want ErrBadPlot", name, err)
		}
	}
}

func TestSinglePointAndFlatData(t *testing.T) {
	// One point, or all points equal, still make a plot.
	for _, pts := range [][]Point{{{3, 3}}, {{3, 3}, {3, 3}}} {
		render(t, &Plot{Series: []Series{{Name: "x", Points: pts}}})
		render(t, &Plot{X: Axis{Log: true}, Y: Axis{Log: true}, Series: []Series{{Name: "x", Points: pts}}})
	}
}

func TestSavePNG(t *testing.T) {
	path := filepath.Join(t.TempDir(), "p.png")
	p := &Plot{Title: "t", X: Axis{Label: "latency", Log: true, Format: FormatSeconds}, Y: Axis{Label: "fraction"},
		Series: []Series{{Name: "a", Points: []Point{{1e-4, 0}, {1e-3, 1}}, Step: true}}}
	if err := p.SavePNG(path); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := png.Decode(f); err != nil {
		t.Fatalf("decode %s: %v", path, err)
	}
}

func TestFormatSeconds(t *testing.T) {
	for v, want := range map[float64]string{0: "0", 1e-4: "100us", 2.5e-3: "2.5ms", 1: "1s", 30: "30s", 5e-8: "50ns"} {
		if got := FormatSeconds(v); got != want {
			t.Errorf("FormatSeconds(%g) = %q, want %q", v, got, want)
		}
	}
}

func TestLegendBelow(t *testing.T) {
	ss := []Series{{Name: "a", Points: []Point{{1, 1}, {2, 2}}}, {Name: "b", Points: []Point{{1, 2}, {2, 1}}}}
	img := render(t, &Plot{Width: 400, Height: 300, Series: ss, Legend: LegendBelow})
	if got, want := img.Bounds().Dy(), 300+legendHeight(ss); got != want || legendHeight(ss) < 2*legendLine {
		t.Errorf("height %d, want %d (the plot's and the legend's)", got, want)
	}
	// The legend's swatches are below the plot area.
	a := frame(image.Rect(0, 0, 400, 300))
	found := false
	for y := a.Max.Y + marginBottom; y < img.Bounds().Max.Y && !found; y++ {
		for x := 0; x < 400; x++ {
			if rgba(img.At(x, y)) == Palette[1] {
				found = true
				break
			}
		}
	}
	if !found {
		t.Error("no swatch of the second series under the plot area")
	}
}

func TestNoNegativeZero(t *testing.T) {
	for _, tk := range (scale{lo: 0, hi: 1}).ticks() {
		if l := (scale{}).label(tk.v); strings.HasPrefix(l, "-") {
			t.Errorf("tick label %q", l)
		}
	}
}
