// Package plot draws the charts of tricopy's benchmark reports as PNG
// images: one plot area with axes (linear or log10) carrying ticks and
// labels, a title, a legend, line and step series with labelled marks, and
// dashed reference lines. It is pure Go: the image packages of the
// standard library and x/image's basicfont for text (ASCII only: a 'µ' is
// drawn as 'u', a '×' as 'x').
//
// A Plot is a plain value: fill it in, then call Image, WritePNG or
// SavePNG. Rendering does not modify the Plot and may run concurrently
// with other renderings.
package plot

import (
	"errors"
	"fmt"
	"image"
	"image/color"
	"image/draw"
	"image/png"
	"io"
	"math"
	"os"
	"strconv"
	"strings"

	"golang.org/x/image/font"
	"golang.org/x/image/font/basicfont"
	"golang.org/x/image/math/fixed"
)

// Default image size.
const (
	// DefaultWidth is the width of a Plot whose Width is 0.
	DefaultWidth = 800
	// DefaultHeight is the height of a Plot whose Height is 0.
	DefaultHeight = 480
)

// minSize bounds Width and Height from below: smaller leaves no plot area.
const minSize = 200

// Errors of Image.
var (
	// ErrNoData means no series has a point that can be drawn (none at all,
	// or none with positive coordinates on a log axis).
	ErrNoData = errors.New("plot: no data to draw")
	// ErrBadPlot means the Plot's settings are inconsistent: a size below
	// 200 pixels, an axis range with Min >= Max, a non-positive bound of a
	// log axis, or a coordinate that is NaN or infinite.
	ErrBadPlot = errors.New("plot: invalid plot")
)

// Colours of the default palette, distinct from each other on white.
var (
	Blue   = color.RGBA{R: 0x1f, G: 0x77, B: 0xb4, A: 0xff}
	Orange = color.RGBA{R: 0xff, G: 0x7f, B: 0x0e, A: 0xff}
	Green  = color.RGBA{R: 0x2c, G: 0xa0, B: 0x2c, A: 0xff}
	Red    = color.RGBA{R: 0xd6, G: 0x27, B: 0x28, A: 0xff}
	Purple = color.RGBA{R: 0x94, G: 0x67, B: 0xbd, A: 0xff}
	Brown  = color.RGBA{R: 0x8c, G: 0x56, B: 0x4b, A: 0xff}
	Gray   = color.RGBA{R: 0x7f, G: 0x7f, B: 0x7f, A: 0xff}
)

// Palette is the default colour of the i-th series: Palette[i%len(Palette)].
var Palette = []color.RGBA{Blue, Orange, Green, Red, Purple, Brown}

// Colours of the frame.
var (
	white     = color.RGBA{R: 0xff, G: 0xff, B: 0xff, A: 0xff}
	black     = color.RGBA{A: 0xff}
	gridColor = color.RGBA{R: 0xe4, G: 0xe4, B: 0xe4, A: 0xff}
	textColor = color.RGBA{R: 0x20, G: 0x20, B: 0x20, A: 0xff}
)

// Point is a point in data coordinates.
type Point struct{ X, Y float64 }

// Mark is a point of a series drawn as a dot in the series' colour with a
// label beside it, like a percentile on a distribution.
type Mark struct {
	X, Y  float64
	Label string
}

// Series is one curve.
type Series struct {
	// Name is the series' legend entry; a series without one has none.
	Name string
	// Color is the series' colour; the zero value takes the palette's
	// colour of the series' index.
	Color color.RGBA
	// Points are joined in order.
	Points []Point
	// Step joins each point to the next by a horizontal then a vertical
	// segment, as a cumulative distribution is drawn; otherwise straight.
	Step bool
	// Marks are dots on the series with a label.
	Marks []Mark
}

// Line is a dashed reference line across the plot area, at X (a vertical
// line, in Plot.VLines) or at Y (horizontal, in Plot.HLines), with a label
// at its end.
type Line struct {
	At    float64
	Label string
	// Color is the line's colour; zero is gray.
	Color color.RGBA
}

// Axis describes one axis.
type Axis struct {
	// Label is drawn along the axis.
	Label string
	// Log makes the axis logarithmic (base 10); only positive values are
	// drawn.
	Log bool
	// Min and Max bound the axis; when both are zero the bounds come from
	// the data (for a log axis: the powers of ten around it).
	Min, Max float64
	// Format formats a tick label; nil formats the number with up to six
	// significant digits.
	Format func(float64) string
}

// Legend positions.
const (
	// LegendTopLeft puts the legend in the plot area's top left corner.
	LegendTopLeft = iota
	// LegendTopRight puts it in the top right corner.
	LegendTopRight
	// LegendBottomRight puts it in the bottom right corner.
	LegendBottomRight
	// LegendBottomLeft puts it in the bottom left corner.
	LegendBottomLeft
	// LegendBelow puts it under the x axis' label, one entry per line,
	// where it hides no data: the image grows by its height.
	LegendBelow
)

// Plot is a chart with one plot area.
type Plot struct {
	// Title is drawn above the plot area.
	Title string
	// Width and Height are the image's size in pixels (0: DefaultWidth,
	// DefaultHeight; at least 200 each).
	Width, Height int
	// X and Y are the axes.
	X, Y Axis
	// Series are drawn in order, the later on top.
	Series []Series
	// VLines and HLines are dashed reference lines.
	VLines, HLines []Line
	// Legend is the legend's corner, a Legend constant.
	Legend int
}

// Image renders the plot. It returns ErrNoData when there is nothing to
// draw and an error wrapping ErrBadPlot for inconsistent settings.
func (p *Plot) Image() (*image.RGBA, error) {
	w, h := p.Width, p.Height
	if w == 0 {
		w = DefaultWidth
	}
	if h == 0 {
		h = DefaultHeight
	}
	if w < minSize || h < minSize {
		return nil, fmt.Errorf("%w: size %dx%d is below %dx%d", ErrBadPlot, w, h, minSize, minSize)
	}
	xs, ys, err := p.scales()
	if err != nil {
		return nil, err
	}
	area := frame(image.Rect(0, 0, w, h))
	if p.Legend == LegendBelow {
		h += legendHeight(p.Series)
	}
	img := image.NewRGBA(image.Rect(0, 0, w, h))
	draw.Draw(img, img.Bounds(), image.NewUniform(white), image.Point{}, draw.Src)
	c := &canvas{img: img, area: area, x: xs, y: ys}
	c.grid()
	c.refLines(p.VLines, p.HLines)
	for i, s := range p.Series {
		c.series(s, seriesColor(s, i))
	}
	c.frame()
	c.axes(p.X, p.Y)
	c.title(p.Title)
	c.legend(p.Series, p.Legend)
	return img, nil
}

// WritePNG renders the plot and writes it to w as PNG.
func (p *Plot) WritePNG(w io.Writer) error {
	img, err := p.Image()
	if err != nil {
		return err
	}
	if err := png.Encode(w, img); err != nil {
		return fmt.Errorf("encode png: %w", err)
	}
	return nil
}

// SavePNG renders the plot and writes it to a new file at path.
func (p *Plot) SavePNG(path string) (err error) {
	img, err := p.Image()
	if err != nil {
		return err
	}
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("save plot: %w", err)
	}
	defer func() {
		if cerr := f.Close(); cerr != nil && err == nil {
			err = fmt.Errorf("save plot: %w", cerr)
		}
	}()
	if err := png.Encode(f, img); err != nil {
		return fmt.Errorf("save plot %s: %w", path, err)
	}
	return nil
}

func seriesColor(s Series, i int) color.RGBA {
	if s.Color.A != 0 {
		return s.Color
	}
	return Palette[i%len(Palette)]
}

// Margins around the plot area, in pixels: room for the title above, the
// tick labels and axis label below and left.
const (
	marginLeft   = 78
	marginRight  = 24
	marginTop    = 34
	marginBottom = 50
)

// frame returns the plot area of an image with bounds b.
func frame(b image.Rectangle) image.Rectangle {
	return image.Rect(b.Min.X+marginLeft, b.Min.Y+marginTop, b.Max.X-marginRight, b.Max.Y-marginBottom)
}

// scale maps data values of one axis to [0, 1].
type scale struct {
	lo, hi float64 // in data units
	log    bool
	format func(float64) string
}

// pos returns v's position on the axis, 0 at lo and 1 at hi, and false
// when v cannot be drawn (not positive on a log axis).
func (s scale) pos(v float64) (float64, bool) {
	if s.log {
		if v <= 0 {
			return 0, false
		}
		return (math.Log10(v) - math.Log10(s.lo)) / (math.Log10(s.hi) - math.Log10(s.lo)), true
	}
	return (v - s.lo) / (s.hi - s.lo), true
}

func (s scale) label(v float64) string {
	if s.format != nil {
		return s.format(v)
	}
	return strconv.FormatFloat(v, 'g', 6, 64)
}

// scales returns the scales of both axes, from the axes' bounds or the
// data.
func (p *Plot) scales() (x, y scale, err error) {
	var xv, yv []float64
	for _, s := range p.Series {
		for _, pt := range s.Points {
			if bad(pt.X) || bad(pt.Y) {
				return x, y, fmt.Errorf("%w: series %q has point (%v, %v)", ErrBadPlot, s.Name, pt.X, pt.Y)
			}
			if (p.X.Log && pt.X <= 0) || (p.Y.Log && pt.Y <= 0) {
				continue
			}
			xv, yv = append(xv, pt.X), append(yv, pt.Y)
		}
	}
	if len(xv) == 0 {
		return x, y, ErrNoData
	}
	if x, err = axisScale(p.X, xv, "x"); err != nil {
		return x, y, err
	}
	y, err = axisScale(p.Y, yv, "y")
	return x, y, err
}

func bad(v float64) bool { return math.IsNaN(v) || math.IsInf(v, 0) }

// axisScale returns the scale of axis a showing the values vs.
func axisScale(a Axis, vs []float64, name string) (scale, error) {
	s := scale{lo: a.Min, hi: a.Max, log: a.Log, format: a.Format}
	if a.Min != 0 || a.Max != 0 {
		switch {
		case bad(a.Min) || bad(a.Max) || a.Min >= a.Max:
			return s, fmt.Errorf("%w: %s axis from %v to %v", ErrBadPlot, name, a.Min, a.Max)
		case a.Log && a.Min <= 0:
			return s, fmt.Errorf("%w: log %s axis from %v", ErrBadPlot, name, a.Min)
		}
		return s, nil
	}
	lo, hi := vs[0], vs[0]
	for _, v := range vs {
		lo, hi = min(lo, v), max(hi, v)
	}
	if a.Log {
		s.lo = math.Pow(10, math.Floor(math.Log10(lo)))
		s.hi = math.Pow(10, math.Ceil(math.Log10(hi)))
		if s.hi <= s.lo {
			s.hi = s.lo * 10
		}
		return s, nil
	}
	if hi == lo {
		d := math.Max(math.Abs(lo)/10, 1)
		lo, hi = lo-d, hi+d
	}
	step := niceStep((hi - lo) / 5)
	s.lo = math.Floor(lo/step) * step
	s.hi = math.Ceil(hi/step) * step
	return s, nil
}

// niceStep returns the smallest of 1, 2 and 5 times a power of ten that is
// at least d (d > 0).
func niceStep(d float64) float64 {
	p := math.Pow(10, math.Floor(math.Log10(d)))
	for _, m := range []float64{1, 2, 5, 10} {
		if m*p >= d*(1-1e-9) {
			return m * p
		}
	}
	return 10 * p
}

// tick is a position on an axis.
type tick struct {
	v     float64
	major bool // labelled, with a grid line
}

// ticks returns the ticks of s. A linear axis gets about six labelled
// ticks at a 1-2-5 step. A log axis gets a labelled tick at every power of
// ten and unlabelled ones at 2..9 times it; when it spans fewer than two
// decades, 2 and 5 times a power of ten are labelled as well.
func (s scale) ticks() []tick {
	const eps = 1e-9
	var out []tick
	if !s.log {
		step := niceStep((s.hi - s.lo) / 6)
		for k := math.Ceil(s.lo/step - eps); k*step <= s.hi+eps*step; k++ {
			// Rounded to the step's precision, so that labels read 0.6,
			// not 0.6000000000000001.
			v, _ := strconv.ParseFloat(strconv.FormatFloat(k*step, 'g', 12, 64), 64)
			if v == 0 {
				v = 0 // not -0
			}
			out = append(out, tick{v: v, major: true})
		}
		return out
	}
	decades := math.Log10(s.hi) - math.Log10(s.lo)
	for e := math.Floor(math.Log10(s.lo)); e <= math.Ceil(math.Log10(s.hi)); e++ {
		base := math.Pow(10, e)
		for m := 1.0; m <= 9; m++ {
			v := m * base
			if v < s.lo*(1-eps) || v > s.hi*(1+eps) {
				continue
			}
			out = append(out, tick{v: v, major: m == 1 || (decades < 2 && (m == 2 || m == 5))})
		}
	}
	return out
}

// canvas draws on an image with a plot area and two scales.
type canvas struct {
	img  *image.RGBA
	area image.Rectangle
	x, y scale
}

// px returns the pixel of data point (x, y), and false if it cannot be
// drawn. The pixel may lie outside the plot area.
func (c *canvas) px(x, y float64) (float64, float64, bool) {
	fx, okx := c.x.pos(x)
	fy, oky := c.y.pos(y)
	if !okx || !oky {
		return 0, 0, false
	}
	a := c.area
	return float64(a.Min.X) + fx*float64(a.Dx()-1), float64(a.Max.Y-1) - fy*float64(a.Dy()-1), true
}

// set colours pixel (x, y) if it is inside clip.
func (c *canvas) set(x, y int, col color.RGBA, clip image.Rectangle) {
	if image.Pt(x, y).In(clip) {
		c.img.SetRGBA(x, y, col)
	}
}

// line draws a line from (x0, y0) to (x1, y1), in pixels, width pixels
// wide, dashed when dash > 0 (dash pixels on, dash off), clipped to the
// plot area.
func (c *canvas) line(x0, y0, x1, y1 float64, col color.RGBA, width, dash int) {
	n := int(math.Ceil(math.Max(math.Abs(x1-x0), math.Abs(y1-y0))))
	for i := 0; i <= n; i++ {
		if dash > 0 && (i/dash)%2 == 1 {
			continue
		}
		t := 0.0
		if n > 0 {
			t = float64(i) / float64(n)
		}
		x := int(math.Round(x0 + t*(x1-x0)))
		y := int(math.Round(y0 + t*(y1-y0)))
		for dx := range width {
			for dy := range width {
				c.set(x+dx-width/2, y+dy-width/2, col, c.area)
			}
		}
	}
}

// grid draws the grid lines of the major ticks.
func (c *canvas) grid() {
	a := c.area
	for _, t := range c.x.ticks() {
		if x, _, ok := c.px(t.v, c.y.lo); ok && t.major {
			c.line(x, float64(a.Min.Y), x, float64(a.Max.Y-1), gridColor, 1, 0)
		}
	}
	for _, t := range c.y.ticks() {
		if _, y, ok := c.px(c.x.lo, t.v); ok && t.major {
			c.line(float64(a.Min.X), y, float64(a.Max.X-1), y, gridColor, 1, 0)
		}
	}
}

// refLines draws the dashed reference lines and their labels.
func (c *canvas) refLines(vlines, hlines []Line) {
	a := c.area
	for _, l := range vlines {
		col := l.Color
		if col.A == 0 {
			col = Gray
		}
		x, _, ok := c.px(l.At, c.y.lo)
		if !ok || x < float64(a.Min.X) || x > float64(a.Max.X) {
			continue
		}
		c.line(x, float64(a.Min.Y), x, float64(a.Max.Y-1), col, 1, 4)
		c.text(int(x)+3, a.Min.Y+13, l.Label, col)
	}
	for _, l := range hlines {
		col := l.Color
		if col.A == 0 {
			col = Gray
		}
		_, y, ok := c.px(c.x.lo, l.At)
		if !ok || y < float64(a.Min.Y) || y > float64(a.Max.Y) {
			continue
		}
		c.line(float64(a.Min.X), y, float64(a.Max.X-1), y, col, 1, 4)
		c.text(a.Min.X+3, int(y)-3, l.Label, col)
	}
}

// series draws s in col.
func (c *canvas) series(s Series, col color.RGBA) {
	var prev [2]float64
	have := false
	for _, pt := range s.Points {
		x, y, ok := c.px(pt.X, pt.Y)
		if !ok {
			continue
		}
		if have {
			if s.Step {
				c.line(prev[0], prev[1], x, prev[1], col, 2, 0)
				c.line(x, prev[1], x, y, col, 2, 0)
			} else {
				c.line(prev[0], prev[1], x, y, col, 2, 0)
			}
		} else if len(s.Points) == 1 {
			c.dot(x, y, col, 3)
		}
		prev, have = [2]float64{x, y}, true
	}
	for _, m := range s.Marks {
		x, y, ok := c.px(m.X, m.Y)
		if !ok {
			continue
		}
		c.dot(x, y, col, 4)
		c.text(int(x)+6, int(y)+4, m.Label, col)
	}
}

// dot draws a filled disc of radius r pixels at (x, y).
func (c *canvas) dot(x, y float64, col color.RGBA, r int) {
	cx, cy := int(math.Round(x)), int(math.Round(y))
	for dx := -r; dx <= r; dx++ {
		for dy := -r; dy <= r; dy++ {
			if dx*dx+dy*dy <= r*r {
				c.set(cx+dx, cy+dy, col, c.area)
			}
		}
	}
}

// frame draws the plot area's border.
func (c *canvas) frame() {
	a := c.area
	for x := a.Min.X - 1; x <= a.Max.X; x++ {
		c.img.SetRGBA(x, a.Min.Y-1, black)
		c.img.SetRGBA(x, a.Max.Y, black)
	}
	for y := a.Min.Y - 1; y <= a.Max.Y; y++ {
		c.img.SetRGBA(a.Min.X-1, y, black)
		c.img.SetRGBA(a.Max.X, y, black)
	}
}

// axes draws the ticks, tick labels and axis labels.
func (c *canvas) axes(xa, ya Axis) {
	a := c.area
	lastRight := math.MinInt
	for _, t := range c.x.ticks() {
		x, _, ok := c.px(t.v, c.y.lo)
		if !ok {
			continue
		}
		ix := int(math.Round(x))
		n := 3
		if t.major {
			n = 6
		}
		for d := 1; d <= n; d++ {
			c.img.SetRGBA(ix, a.Max.Y+d, black)
		}
		if t.major {
			s := c.x.label(t.v)
			w := textWidth(s)
			if left := ix - w/2; left > lastRight+4 {
				c.text(left, a.Max.Y+20, s, textColor)
				lastRight = left + w
			}
		}
	}
	c.text(a.Min.X+(a.Dx()-textWidth(xa.Label))/2, a.Max.Y+40, xa.Label, textColor)
	for _, t := range c.y.ticks() {
		_, y, ok := c.px(c.x.lo, t.v)
		if !ok {
			continue
		}
		iy := int(math.Round(y))
		n := 3
		if t.major {
			n = 6
		}
		for d := 1; d <= n; d++ {
			c.img.SetRGBA(a.Min.X-1-d, iy, black)
		}
		if t.major {
			s := c.y.label(t.v)
			c.text(a.Min.X-10-textWidth(s), iy+4, s, textColor)
		}
	}
	c.vtext(8, a.Min.Y+(a.Dy()+textWidth(ya.Label))/2, ya.Label, textColor)
}

// title draws the title centred above the plot area, in bold.
func (c *canvas) title(s string) {
	x := c.area.Min.X + (c.area.Dx()-textWidth(s))/2
	x = max(x, 4)
	c.text(x, 22, s, black)
	c.text(x+1, 22, s, black)
}

// Legend layout, in pixels.
const (
	legendLine   = 16 // height of an entry
	legendSwatch = 22 // length of an entry's line of colour
	legendPad    = 6  // inside the box
)

// legendHeight returns the height of the legend box of ss, 0 for none, and
// a margin under it.
func legendHeight(ss []Series) int {
	n := 0
	for _, s := range ss {
		if s.Name != "" {
			n++
		}
	}
	if n == 0 {
		return 0
	}
	return 2*legendPad + n*legendLine - 2 + 8
}

// legend draws a box with a line of each named series' colour and its name
// in the plot area's corner pos.
func (c *canvas) legend(ss []Series, pos int) {
	type entry struct {
		name string
		col  color.RGBA
	}
	var entries []entry
	w := 0
	for i, s := range ss {
		if s.Name != "" {
			entries = append(entries, entry{s.Name, seriesColor(s, i)})
			w = max(w, textWidth(s.Name))
		}
	}
	if len(entries) == 0 {
		return
	}
	const lineH, swatch, pad = legendLine, legendSwatch, legendPad
	bw, bh := pad+swatch+6+w+pad, pad+len(entries)*lineH+pad-2
	a := c.area
	x0, y0 := a.Min.X+8, a.Min.Y+8
	switch pos {
	case LegendTopRight:
		x0 = a.Max.X - 8 - bw
	case LegendBottomRight:
		x0, y0 = a.Max.X-8-bw, a.Max.Y-8-bh
	case LegendBottomLeft:
		y0 = a.Max.Y - 8 - bh
	case LegendBelow:
		y0 = a.Max.Y + marginBottom
	}
	box := image.Rect(x0, y0, x0+bw, y0+bh)
	draw.Draw(c.img, box, image.NewUniform(white), image.Point{}, draw.Src)
	for x := box.Min.X; x < box.Max.X; x++ {
		c.img.SetRGBA(x, box.Min.Y, Gray)
		c.img.SetRGBA(x, box.Max.Y-1, Gray)
	}
	for y := box.Min.Y; y < box.Max.Y; y++ {
		c.img.SetRGBA(box.Min.X, y, Gray)
		c.img.SetRGBA(box.Max.X-1, y, Gray)
	}
	for i, e := range entries {
		y := y0 + pad + i*lineH + lineH/2
		for x := x0 + pad; x < x0+pad+swatch; x++ {
			for d := -1; d <= 1; d++ {
				c.img.SetRGBA(x, y+d, e.col)
			}
		}
		c.text(x0+pad+swatch+6, y+4, e.name, textColor)
	}
}

// face is the font of every text.
var face = basicfont.Face7x13

// ascii replaces what the font lacks: 'µ' by 'u', '×' by 'x', dashes by
// '-', other non-ASCII by '?'.
func ascii(s string) string {
	return strings.Map(func(r rune) rune {
		switch {
		case r == 'µ':
			return 'u'
		case r == '×':
			return 'x'
		case r == '–' || r == '—':
			return '-'
		case r < 0x20 || r > 0x7e:
			return '?'
		}
		return r
	}, s)
}

// textWidth returns the width of s in pixels.
func textWidth(s string) int {
	return font.MeasureString(face, ascii(s)).Ceil()
}

// text draws s with its baseline's left end at (x, y).
func (c *canvas) text(x, y int, s string, col color.RGBA) {
	d := font.Drawer{Dst: c.img, Src: image.NewUniform(col), Face: face, Dot: fixed.P(x, y)}
	d.DrawString(ascii(s))
}

// vtext draws s rotated a quarter turn anticlockwise, reading bottom to
// top, with the top of its letters at x and its start at y.
func (c *canvas) vtext(x, y int, s string, col color.RGBA) {
	w := textWidth(s)
	if w == 0 {
		return
	}
	h := face.Height
	tmp := image.NewRGBA(image.Rect(0, 0, w, h))
	d := font.Drawer{Dst: tmp, Src: image.NewUniform(col), Face: face, Dot: fixed.P(0, face.Ascent)}
	d.DrawString(ascii(s))
	for tx := range w {
		for ty := range h {
			if p := tmp.RGBAAt(tx, ty); p.A != 0 {
				c.img.SetRGBA(x+ty, y-tx, blend(c.img.RGBAAt(x+ty, y-tx), p))
			}
		}
	}
}

// blend draws premultiplied src over dst.
func blend(dst, src color.RGBA) color.RGBA {
	k := 255 - uint32(src.A)
	return color.RGBA{
		R: uint8(uint32(src.R) + uint32(dst.R)*k/255),
		G: uint8(uint32(src.G) + uint32(dst.G)*k/255),
		B: uint8(uint32(src.B) + uint32(dst.B)*k/255),
		A: uint8(uint32(src.A) + uint32(dst.A)*k/255),
	}
}

// FormatSeconds formats a tick value in seconds as a duration with a unit
// chosen for its size: 250us, 1.5ms, 2s.
func FormatSeconds(v float64) string {
	a := math.Abs(v)
	switch {
	case v == 0:
		return "0"
	case a < 1e-6:
		return trimFloat(v*1e9) + "ns"
	case a < 1e-3:
		return trimFloat(v*1e6) + "us"
	case a < 1:
		return trimFloat(v*1e3) + "ms"
	}
	return trimFloat(v) + "s"
}

// trimFloat formats v with up to three significant digits, no trailing
// zeros.
func trimFloat(v float64) string {
	return strings.TrimSuffix(fmt.Sprintf("%.3g", v), ".0")
}
