package e2e

import (
	"bytes"
	"context"
	"fmt"
	"image"
	"image/color"
	"image/png"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The colours of the web page's badges (docs/OPERATIONS.md, "Web page").
var (
	webGreen = color.RGBA{0x2e, 0x7d, 0x32, 0xff} // healthy: PAIR
	webAmber = color.RGBA{0xf9, 0xa8, 0x25, 0xff} // degraded or in progress
	webRed   = color.RGBA{0xc6, 0x28, 0x28, 0xff} // failed: no leader, unreachable
)

const (
	// chromiumTimeout bounds one run of headless Chromium.
	chromiumTimeout = 60 * time.Second
	// webPixels is how many pixels of a state's colour a screenshot that
	// shows that state has at least (a badge is some 70x20 pixels, the
	// error banner the page's width).
	webPixels = 1000
	// webStray is how many pixels of a colour a screenshot may have where
	// that colour's state is not shown: the legend's swatch (10x10).
	webStray = 150
)

// chromium loads url in headless Chromium (a fresh profile, a 1200x900
// window, 5 s of virtual time for the page's script to poll) with the
// extra flags (--dump-dom, --screenshot=FILE) and returns its standard
// output. It fails t if Chromium fails or runs longer than
// chromiumTimeout; Chromium's process group is killed then.
func chromium(t *testing.T, url string, extra ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), chromiumTimeout)
	defer cancel()
	args := []string{"--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
		"--disable-background-networking", "--disable-component-update", "--disable-sync",
		"--user-data-dir=" + t.TempDir(), "--window-size=1200,900", "--virtual-time-budget=5000"}
	args = append(append(args, extra...), url)
	cmd := exec.CommandContext(ctx, "chromium", args...)
	cmd.Env = childEnv()
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	if err := cmd.Run(); err != nil {
		t.Fatalf("chromium %s: %v after %v\nstderr:\n%s", strings.Join(args, " "), err,
			time.Since(start).Round(time.Millisecond), clip(stderr.String()))
	}
	return stdout.String()
}

// webDOM returns the page at url as its script rendered it.
func webDOM(t *testing.T, url string) string {
	t.Helper()
	return chromium(t, url, "--dump-dom")
}

// webScreenshot takes a screenshot of the page at url, keeps it as
// name.png in the test's artifact directory (go test -artifacts keeps
// it), and returns how many of its pixels have each colour of cs.
func webScreenshot(t *testing.T, url, name string, cs ...color.RGBA) []int {
	t.Helper()
	file := filepath.Join(t.ArtifactDir(), name+".png")
	chromium(t, url, "--screenshot="+file)
	f, err := os.Open(file)
	if err != nil {
		t.Fatalf("chromium wrote no screenshot: %v", err)
	}
	defer f.Close()
	img, err := png.Decode(f)
	if err != nil {
		t.Fatalf("screenshot %s: %v", file, err)
	}
	counts := countColours(img, cs...)
	t.Logf("screenshot %s (%v): %v pixels of %v", file, img.Bounds().Size(), counts, cs)
	return counts
}

// countColours returns how many pixels of img have each colour of cs,
// give or take 2 per channel (rounding in the renderer).
func countColours(img image.Image, cs ...color.RGBA) []int {
	near := func(a uint32, b uint8) bool {
		d := int(a>>8) - int(b)
		return d >= -2 && d <= 2
	}
	counts := make([]int, len(cs))
	b := img.Bounds()
	for y := b.Min.Y; y < b.Max.Y; y++ {
		for x := b.Min.X; x < b.Max.X; x++ {
			r, g, bl, _ := img.At(x, y).RGBA()
			for i, c := range cs {
				if near(r, c.R) && near(g, c.G) && near(bl, c.B) {
					counts[i]++
				}
			}
		}
	}
	return counts
}

// volumeState matches the section of volume a in the rendered page, with
// its state.
var volumeState = regexp.MustCompile(`<section class="volume" data-volume="a" data-state="([A-Z]*)"`)

// webVolumeState returns the state of volume a the page at url shows,
// "" if it shows no volume a, and the rendered DOM.
func webVolumeState(t *testing.T, url string) (state, dom string) {
	t.Helper()
	dom = webDOM(t, url)
	if m := volumeState.FindStringSubmatch(dom); m != nil {
		return m[1], dom
	}
	return "", dom
}

// TestWebPage loads the web page of the metrics servers in headless
// Chromium: a one-node intermediate and a mirrored primary (--fence never),
// each with --metrics. With the volume in PAIR, the intermediate's page
// shows it PAIR, the group healthy and green badges, no red; the
// primary's page shows PAIR too. Once the intermediate is stopped (the
// primary goes on, suspended), the primary's page shows the red banner
// (no leader reachable), no green. Once the intermediate is back and the
// volume resynchronised, the primary's page shows PAIR again.
//
// The screenshots are kept with go test -artifacts:
//
//	go test -count=1 -run TestWebPage -artifacts -outputdir /tmp/web ./e2e/
func TestWebPage(t *testing.T) {
	requireFUSE(t, "chromium")
	base := t.TempDir()
	interMetrics, primMetrics := freeAddr(t), freeAddr(t)
	nodes := startIntermediates(t, filepath.Join(base, "inter"), 1, "--metrics", interMetrics)
	addrs := nodeAddrs(nodes)
	spec := mirrorSpec{volume: "a", data: filepath.Join(base, "data"), mnt: filepath.Join(base, "mnt"), addrs: addrs,
		extra: []string{"--fence", "never", "--fence-timeout", fenceTimeout.String(), "--metrics", primMetrics}}
	startMirrored(t, spec)
	if err := writeSynced(filepath.Join(spec.mnt, "paired"), fileData(1, "paired", 10_000)); err != nil {
		t.Fatal(err)
	}
	waitState(t, addrs, "PAIR", pairTimeout, "a")
	interURL, primURL := "http://"+interMetrics+"/", "http://"+primMetrics+"/"

	state, dom := webVolumeState(t, interURL)
	if state != "PAIR" || !strings.Contains(dom, `<body data-health="ok">`) || !strings.Contains(dom, ">PAIR</span>") {
		t.Fatalf("the intermediate's page does not show volume a in PAIR, healthy (state %q):\n%s", state, dom)
	}
	if n := webScreenshot(t, interURL, "pair", webGreen, webRed); n[0] < webPixels || n[1] > webStray {
		t.Errorf("screenshot of volume a in PAIR: %d green pixels (want at least %d), %d red (want at most %d)",
			n[0], webPixels, n[1], webStray)
	}
	if state, dom := webVolumeState(t, primURL); state != "PAIR" {
		t.Fatalf("the primary's page does not show volume a in PAIR (state %q):\n%s", state, dom)
	}

	nodes[0].stop(t)
	// The primary suspends mirroring and goes on (fence never).
	if err := writeSynced(filepath.Join(spec.mnt, "suspended"), fileData(1, "suspended", 10_000)); err != nil {
		t.Fatalf("write with the intermediate down (fence never): %v", err)
	}
	state, dom = webVolumeState(t, primURL)
	if state != "" || !strings.Contains(dom, `<body data-health="bad">`) || !strings.Contains(dom, `<div id="banner" role="alert" class="shown">`) ||
		!strings.Contains(dom, "No leader") {
		t.Fatalf("with the intermediate down, the primary's page does not show the no-leader banner (volume state %q):\n%s", state, dom)
	}
	if n := webScreenshot(t, primURL, "no-leader", webRed, webGreen, webAmber); n[0] < webPixels || n[1] > webStray {
		t.Errorf("screenshot with the intermediate down: %d red pixels (want at least %d), %d green (want at most %d)",
			n[0], webPixels, n[1], webStray)
	}

	nodes[0].restart(t)
	seen := map[string]bool{}
	deadline := time.Now().Add(pairTimeout)
	for {
		state, dom = webVolumeState(t, primURL)
		seen[state] = true
		if state == "PAIR" && strings.Contains(dom, `<body data-health="ok">`) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the primary's page does not show volume a back in PAIR %v after the intermediate's restart (states seen: %v):\n%s",
				pairTimeout, seen, dom)
		}
	}
	t.Logf("after the restart, the primary's page showed the states %s", fmt.Sprint(seen))
}
