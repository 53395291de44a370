package e2e

import (
	"bufio"
	"io"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// scrape GETs http://addr/metrics and returns every sample by its series
// as the text format writes it (name{label="value",...}).
func scrape(t testing.TB, addr string) (map[string]float64, error) {
	t.Helper()
	c := &http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get("http://" + addr + "/metrics")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("GET http://%s/metrics: %s: %s", addr, resp.Status, b)
	}
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			t.Fatalf("metrics of %s: line %q has no value", addr, line)
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			t.Fatalf("metrics of %s: line %q: %v", addr, line, err)
		}
		out[line[:i]] = v
	}
	return out, sc.Err()
}

// mustScrape is scrape failing t on an error.
func mustScrape(t testing.TB, addr string) map[string]float64 {
	t.Helper()
	m, err := scrape(t, addr)
	if err != nil {
		t.Fatalf("scrape %s: %v", addr, err)
	}
	return m
}

// sample returns the value of series in m, failing t if it is missing.
func sample(t testing.TB, m map[string]float64, what, series string) float64 {
	t.Helper()
	v, ok := m[series]
	if !ok {
		t.Fatalf("the metrics of %s lack %s", what, series)
	}
	return v
}

// TestMetrics runs an intermediate node, a mirrored primary of volume a and
// its secondary, each with --metrics, writes a file, waits for the
// secondary (tricopy wait), and checks key series of each /metrics: the
// node leads and committed batches, the mirror is in PAIR, the secondary
// applied the committed seq; each process also exports the Go and process
// collectors.
func TestMetrics(t *testing.T) {
	requireFUSE(t)
	base := t.TempDir()
	interMetrics, primMetrics, secMetrics := freeAddr(t), freeAddr(t), freeAddr(t)
	nodes := startIntermediates(t, filepath.Join(base, "inter"), 1, "--metrics", interMetrics)
	addrs := nodeAddrs(nodes)
	prim := mirrorSpec{volume: "a", data: filepath.Join(base, "data", "a"), mnt: filepath.Join(base, "primary", "a"),
		addrs: addrs, extra: []string{"--metrics", primMetrics}}
	startMirrored(t, prim)
	waitState(t, addrs, "PAIR", pairTimeout, "a")
	sec := secondarySpec{volume: "a", data: filepath.Join(base, "secdata", "a"), mnt: filepath.Join(base, "secondary", "a"),
		listen: freeAddr(t), addrs: addrs, extra: []string{"--metrics", secMetrics}}
	startSecondary(t, sec)

	data := fileData(1, "hello", 100<<10)
	if err := writeSynced(filepath.Join(prim.mnt, "hello"), data); err != nil {
		t.Fatal(err)
	}
	waitAll(t, addrs)
	checkFile(t, filepath.Join(sec.mnt, "hello"), data)

	im := mustScrape(t, interMetrics)
	committed := sample(t, im, "the intermediate", "tricopy_intermediate_committed_seq")
	if committed <= 0 {
		t.Errorf("tricopy_intermediate_committed_seq %v, want > 0", committed)
	}
	if v := sample(t, im, "the intermediate", "tricopy_intermediate_leader"); v != 1 {
		t.Errorf("tricopy_intermediate_leader %v, want 1", v)
	}

	pm := mustScrape(t, primMetrics)
	if v := sample(t, pm, "the primary", `tricopy_mirror_state{state="PAIR",volume="a"}`); v != 1 {
		t.Errorf(`tricopy_mirror_state{state="PAIR",volume="a"} %v, want 1`, v)
	}
	if v := sample(t, pm, "the primary", `tricopy_mirror_state{state="SUSP",volume="a"}`); v != 0 {
		t.Errorf(`tricopy_mirror_state{state="SUSP",volume="a"} %v, want 0`, v)
	}
	if v := sample(t, pm, "the primary", `tricopy_mirror_applied_seq{volume="a"}`); v <= 0 || v > committed {
		t.Errorf(`tricopy_mirror_applied_seq{volume="a"} %v, want in 1..%v`, v, committed)
	}

	// tricopy wait returned once the secondary applied what was committed
	// when it asked; the primary may have committed more since (metadata
	// flushed late): poll until the secondary is at the node's committed
	// seq, read from the node's metrics at the same time.
	const applied = `tricopy_secondary_applied_seq{secondary="a",volume="a"}`
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		want := sample(t, mustScrape(t, interMetrics), "the intermediate", "tricopy_intermediate_committed_seq")
		got := sample(t, mustScrape(t, secMetrics), "the secondary", applied)
		if got == want {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s is %v, the intermediate's committed seq %v, after 30s", applied, got, want)
		}
	}
	sm := mustScrape(t, secMetrics)
	for series, want := range map[string]float64{
		`tricopy_secondary_state{secondary="a",state="PAIR",volume="a"}`:   1,
		`tricopy_secondary_state{secondary="a",state="FAILED",volume="a"}`: 0,
		`tricopy_secondary_connected{secondary="a",volume="a"}`:            1,
		`tricopy_secondary_promoted{secondary="a",volume="a"}`:             0,
	} {
		if v := sample(t, sm, "the secondary", series); v != want {
			t.Errorf("%s %v, want %v", series, v, want)
		}
	}
	for what, m := range map[string]map[string]float64{"the intermediate": im, "the primary": pm, "the secondary": sm} {
		sample(t, m, what, "go_goroutines")
		sample(t, m, what, "process_start_time_seconds")
	}
}
