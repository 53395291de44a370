package configs

import (
	"encoding/json"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// dashboardFile is the Grafana dashboard shipped with the repository.
const dashboardFile = "grafana-dashboard.json"

// repoRoot is the module's root directory, seen from this package's
// directory (where go test runs).
const repoRoot = ".."

// metricNameRE finds the tricopy metric names in a PromQL expression.
var metricNameRE = regexp.MustCompile(`tricopy_[a-z0-9_]+`)

// grafanaDashboard is the part of Grafana's dashboard JSON model the tests
// check.
type grafanaDashboard struct {
	Inputs        []grafanaInput `json:"__inputs"`
	UID           string         `json:"uid"`
	Title         string         `json:"title"`
	SchemaVersion int            `json:"schemaVersion"`
	Panels        []grafanaPanel `json:"panels"`
	Templating    struct {
		List []struct {
			Name       string            `json:"name"`
			Type       string            `json:"type"`
			Datasource grafanaDatasource `json:"datasource"`
		} `json:"list"`
	} `json:"templating"`
}

// grafanaInput is an input the dashboard asks for when imported.
type grafanaInput struct {
	Name     string `json:"name"`
	Type     string `json:"type"`
	PluginID string `json:"pluginId"`
}

type grafanaPanel struct {
	ID         int                `json:"id"`
	Type       string             `json:"type"`
	Title      string             `json:"title"`
	Datasource *grafanaDatasource `json:"datasource"`
	GridPos    *struct {
		H, W, X, Y int
	} `json:"gridPos"`
	Targets []struct {
		RefID      string             `json:"refId"`
		Expr       string             `json:"expr"`
		Datasource *grafanaDatasource `json:"datasource"`
	} `json:"targets"`
	// Panels are the panels of a collapsed row.
	Panels []grafanaPanel `json:"panels"`
}

type grafanaDatasource struct {
	Type string `json:"type"`
	UID  string `json:"uid"`
}

// dsInput is the datasource input the dashboard asks for when imported.
const dsInput = "${DS_PROMETHEUS}"

// loadDashboard reads and decodes the dashboard, and returns it with all
// its panels, rows and the panels of collapsed rows included.
func loadDashboard(t *testing.T) (grafanaDashboard, []grafanaPanel) {
	t.Helper()
	data, err := os.ReadFile(dashboardFile)
	if err != nil {
		t.Fatal(err)
	}
	var d grafanaDashboard
	if err := json.Unmarshal(data, &d); err != nil {
		t.Fatalf("%s is not a JSON dashboard: %v", dashboardFile, err)
	}
	var panels []grafanaPanel
	var walk func([]grafanaPanel)
	walk = func(ps []grafanaPanel) {
		for _, p := range ps {
			panels = append(panels, p)
			walk(p.Panels)
		}
	}
	walk(d.Panels)
	return d, panels
}

// TestDashboardShape checks that the dashboard is a Grafana dashboard model
// that imports with a Prometheus datasource input and a volume variable,
// and that every panel queries that datasource.
func TestDashboardShape(t *testing.T) {
	d, panels := loadDashboard(t)
	if d.UID == "" || d.Title == "" {
		t.Errorf("dashboard needs a uid and a title, got uid %q title %q", d.UID, d.Title)
	}
	if d.SchemaVersion < 36 {
		t.Errorf("schemaVersion %d: want 36 or later (Grafana 9+ model)", d.SchemaVersion)
	}
	if !slices.Contains(d.Inputs, grafanaInput{Name: "DS_PROMETHEUS", Type: "datasource", PluginID: "prometheus"}) {
		t.Errorf("no __inputs entry DS_PROMETHEUS of type datasource, plugin prometheus")
	}
	hasVolume := false
	for _, v := range d.Templating.List {
		if v.Name == "volume" {
			hasVolume = true
			if v.Type != "query" || v.Datasource.UID != dsInput {
				t.Errorf("variable volume: type %q datasource %q, want a query on %s", v.Type, v.Datasource.UID, dsInput)
			}
		}
	}
	if !hasVolume {
		t.Error("no templating variable named volume")
	}
	if len(panels) < 10 {
		t.Fatalf("%d panels: the dashboard looks truncated", len(panels))
	}
	ids := map[int]string{}
	for _, p := range panels {
		if prev, ok := ids[p.ID]; ok || p.ID == 0 {
			t.Errorf("panel %q: id %d missing or also used by %q", p.Title, p.ID, prev)
		}
		ids[p.ID] = p.Title
		if p.Type == "" || p.Title == "" {
			t.Errorf("panel %d: type %q title %q, want both", p.ID, p.Type, p.Title)
		}
		if g := p.GridPos; g == nil || g.W < 1 || g.H < 1 || g.X < 0 || g.X+g.W > 24 || g.Y < 0 {
			t.Errorf("panel %q: gridPos %+v is not inside Grafana's 24-column grid", p.Title, g)
		}
		if p.Type == "row" {
			if len(p.Targets) > 0 {
				t.Errorf("row %q has targets", p.Title)
			}
			continue
		}
		if p.Datasource == nil || p.Datasource.UID != dsInput || p.Datasource.Type != "prometheus" {
			t.Errorf("panel %q: datasource %+v, want prometheus %s", p.Title, p.Datasource, dsInput)
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no targets", p.Title)
		}
		refs := map[string]bool{}
		for i, tg := range p.Targets {
			if strings.TrimSpace(tg.Expr) == "" {
				t.Errorf("panel %q target %d has no expr", p.Title, i)
			}
			if tg.RefID == "" || refs[tg.RefID] {
				t.Errorf("panel %q target %d: refId %q empty or repeated", p.Title, i, tg.RefID)
			}
			refs[tg.RefID] = true
			if tg.Datasource != nil && tg.Datasource.UID != dsInput {
				t.Errorf("panel %q target %s: datasource %q, want %s", p.Title, tg.RefID, tg.Datasource.UID, dsInput)
			}
			if strings.Count(tg.Expr, "(") != strings.Count(tg.Expr, ")") || strings.Count(tg.Expr, "{") != strings.Count(tg.Expr, "}") {
				t.Errorf("panel %q target %s: unbalanced brackets in %s", p.Title, tg.RefID, tg.Expr)
			}
		}
	}
}

// TestDashboardMetricsExist checks that every tricopy_* series a panel
// queries is declared by the code, so that renaming a metric without the
// dashboard fails here. The names are read from the repository's Go sources
// (configs must not import the packages that declare them).
func TestDashboardMetricsExist(t *testing.T) {
	declared, unresolved := declaredMetrics(t, repoRoot)
	for _, u := range unresolved {
		t.Errorf("%s: a metric whose name this test cannot work out; teach declaredMetrics the new form", u)
	}
	if len(declared) == 0 {
		t.Fatal("no metric declarations found in the Go sources")
	}
	_, panels := loadDashboard(t)
	used := 0
	for _, p := range panels {
		for _, tg := range p.Targets {
			for _, name := range metricNameRE.FindAllString(tg.Expr, -1) {
				used++
				if !seriesDeclared(declared, name) {
					t.Errorf("panel %q target %s queries %s, which no Go file declares (renamed? declared metrics: %s)",
						p.Title, tg.RefID, name, strings.Join(sortedKeys(declared), ", "))
				}
			}
		}
	}
	if used == 0 {
		t.Error("no panel queries a tricopy_* series")
	}
}

// metricKind says which series names a declared metric exports.
type metricKind int

const (
	kindPlain     metricKind = iota // the name itself: gauges, counters
	kindHistogram                   // NAME_bucket, NAME_sum, NAME_count
	kindSummary                     // NAME, NAME_sum, NAME_count
)

// seriesDeclared reports whether the series name is exported by a declared
// metric: itself, or a histogram's or summary's suffixed series.
func seriesDeclared(declared map[string]metricKind, name string) bool {
	if _, ok := declared[name]; ok {
		return true
	}
	for _, suffix := range []string{"_bucket", "_sum", "_count"} {
		base, ok := strings.CutSuffix(name, suffix)
		if !ok {
			continue
		}
		switch declared[base] {
		case kindHistogram:
			return true
		case kindSummary:
			if suffix != "_bucket" {
				return true
			}
		}
	}
	return false
}

func sortedKeys[V any](m map[string]V) []string {
	var keys []string
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// TestDeclaredMetricsForms checks declaredMetrics on the forms the code uses
// to declare metrics, and that it reports one it cannot resolve.
func TestDeclaredMetricsForms(t *testing.T) {
	dir := t.TempDir()
	src := `package x

import "github.com/prometheus/client_golang/prometheus"

var d = prometheus.NewDesc("tricopy_x_literal", "help", nil, nil)

var opts = prometheus.HistogramOpts{Namespace: "tricopy", Subsystem: "x", Name: "latency_seconds"}

func c() {
	_ = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "tricopy_x_total"}, nil)
	_ = prometheus.NewSummary(prometheus.SummaryOpts{Name: "tricopy_x_summary"})
	desc := func(name, help string) *prometheus.Desc {
		return prometheus.NewDesc("tricopy_x_"+name, help, nil, nil)
	}
	_ = desc("prefixed", "help")
	_ = prometheus.NewDesc(prometheus.BuildFQName("tricopy", "x", "built"), "h", nil, nil)
	name := "dynamic"
	_ = prometheus.NewDesc(name, "h", nil, nil)
}
`
	if err := os.WriteFile(filepath.Join(dir, "x.go"), []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	got, unresolved := declaredMetrics(t, dir)
	want := map[string]metricKind{
		"tricopy_x_literal":         kindPlain,
		"tricopy_x_latency_seconds": kindHistogram,
		"tricopy_x_total":           kindPlain,
		"tricopy_x_summary":         kindSummary,
		"tricopy_x_prefixed":        kindPlain,
		"tricopy_x_built":           kindPlain,
	}
	if !maps.Equal(got, want) {
		t.Errorf("declared metrics:\n got %v\nwant %v", got, want)
	}
	if len(unresolved) != 1 || !strings.Contains(unresolved[0], "x.go:18") {
		t.Errorf("unresolved = %q, want the NewDesc at x.go:18", unresolved)
	}
	for name, want := range map[string]bool{
		"tricopy_x_latency_seconds_bucket": true, "tricopy_x_latency_seconds_count": true,
		"tricopy_x_summary_sum": true, "tricopy_x_summary_bucket": false,
		"tricopy_x_total_count": false, "tricopy_x_totally": false,
	} {
		if got := seriesDeclared(got, name); got != want {
			t.Errorf("seriesDeclared(%s) = %v, want %v", name, got, want)
		}
	}
}

// declaredMetrics parses the non-test Go files under root that mention
// prometheus and returns the metric names they declare, with their kind.
// It understands:
//
//	prometheus.NewDesc("full_name", ...)
//	prometheus.NewDesc(prometheus.BuildFQName("ns", "sub", "name"), ...)
//	prometheus.XxxOpts{Namespace: "ns", Subsystem: "sub", Name: "name"}
//	desc := func(name, ...) { ... prometheus.NewDesc("prefix_"+name, ...) }
//	desc("name", ...)  // in the same function
//
// A NewDesc or an Opts name in any other form is returned in unresolved
// (file:line), so that a new form fails the test instead of hiding names.
func declaredMetrics(t *testing.T, root string) (declared map[string]metricKind, unresolved []string) {
	t.Helper()
	declared = map[string]metricKind{}
	fset := token.NewFileSet()
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		name := d.Name()
		if d.IsDir() {
			if path != root && (strings.HasPrefix(name, ".") || strings.HasPrefix(name, "_") || name == "testdata" || name == "vendor" || name == "bin") {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(name, ".go") || strings.HasSuffix(name, "_test.go") {
			return nil
		}
		src, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		if !strings.Contains(string(src), "prometheus") {
			return nil
		}
		f, err := parser.ParseFile(fset, path, src, parser.SkipObjectResolution)
		if err != nil {
			return fmt.Errorf("parse %s: %w", path, err)
		}
		u := collectMetrics(fset, f, declared)
		unresolved = append(unresolved, u...)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return declared, unresolved
}

// collectMetrics adds the metrics file f declares to declared and returns
// the positions of declarations it cannot resolve.
func collectMetrics(fset *token.FileSet, f *ast.File, declared map[string]metricKind) (unresolved []string) {
	// Helpers: name := func(p, ...) { NewDesc("prefix"+p, ...) }, per
	// enclosing top-level declaration.
	for _, decl := range f.Decls {
		helpers := map[string]string{} // helper variable -> prefix
		resolved := map[ast.Node]bool{}
		ast.Inspect(decl, func(n ast.Node) bool {
			as, ok := n.(*ast.AssignStmt)
			if !ok || len(as.Lhs) != 1 || len(as.Rhs) != 1 {
				return true
			}
			id, ok1 := as.Lhs[0].(*ast.Ident)
			fl, ok2 := as.Rhs[0].(*ast.FuncLit)
			if !ok1 || !ok2 || len(fl.Type.Params.List) == 0 || len(fl.Type.Params.List[0].Names) == 0 {
				return true
			}
			param := fl.Type.Params.List[0].Names[0].Name
			ast.Inspect(fl.Body, func(n ast.Node) bool {
				call, ok := n.(*ast.CallExpr)
				if !ok || !isPromCall(call, "NewDesc") || len(call.Args) == 0 {
					return true
				}
				be, ok := call.Args[0].(*ast.BinaryExpr)
				if !ok || be.Op != token.ADD {
					return true
				}
				prefix, okP := stringLit(be.X)
				arg, okA := be.Y.(*ast.Ident)
				if okP && okA && arg.Name == param {
					helpers[id.Name] = prefix
					resolved[call] = true
				}
				return true
			})
			return true
		})
		ast.Inspect(decl, func(n ast.Node) bool {
			switch n := n.(type) {
			case *ast.CallExpr:
				if id, ok := n.Fun.(*ast.Ident); ok && len(n.Args) > 0 {
					if prefix, ok := helpers[id.Name]; ok {
						if s, ok := stringLit(n.Args[0]); ok {
							declared[prefix+s] = kindPlain
						} else {
							unresolved = append(unresolved, fset.Position(n.Pos()).String())
						}
					}
				}
				if !isPromCall(n, "NewDesc") || resolved[n] {
					return true
				}
				if len(n.Args) > 0 {
					if s, ok := stringLit(n.Args[0]); ok {
						declared[s] = kindPlain
						return true
					}
					if fq, ok := n.Args[0].(*ast.CallExpr); ok && isPromCall(fq, "BuildFQName") && len(fq.Args) == 3 {
						if s, ok := joinLits(fq.Args); ok {
							declared[s] = kindPlain
							return true
						}
					}
				}
				unresolved = append(unresolved, fset.Position(n.Pos()).String())
			case *ast.CompositeLit:
				sel, ok := n.Type.(*ast.SelectorExpr)
				if !ok || !isPromIdent(sel.X) || !strings.HasSuffix(sel.Sel.Name, "Opts") {
					return true
				}
				parts := map[string]ast.Expr{}
				for _, e := range n.Elts {
					if kv, ok := e.(*ast.KeyValueExpr); ok {
						if k, ok := kv.Key.(*ast.Ident); ok {
							parts[k.Name] = kv.Value
						}
					}
				}
				if parts["Name"] == nil {
					return true
				}
				var exprs []ast.Expr
				for _, k := range []string{"Namespace", "Subsystem", "Name"} {
					if parts[k] != nil {
						exprs = append(exprs, parts[k])
					}
				}
				s, ok := joinLits(exprs)
				if !ok {
					unresolved = append(unresolved, fset.Position(n.Pos()).String())
					return true
				}
				kind := kindPlain
				switch sel.Sel.Name {
				case "HistogramOpts":
					kind = kindHistogram
				case "SummaryOpts":
					kind = kindSummary
				}
				declared[s] = kind
			}
			return true
		})
	}
	return unresolved
}

// isPromCall reports whether call is prometheus.NAME(...).
func isPromCall(call *ast.CallExpr, name string) bool {
	sel, ok := call.Fun.(*ast.SelectorExpr)
	return ok && sel.Sel.Name == name && isPromIdent(sel.X)
}

func isPromIdent(e ast.Expr) bool {
	id, ok := e.(*ast.Ident)
	return ok && id.Name == "prometheus"
}

// stringLit returns the value of a string literal.
func stringLit(e ast.Expr) (string, bool) {
	lit, ok := e.(*ast.BasicLit)
	if !ok || lit.Kind != token.STRING {
		return "", false
	}
	s, err := strconv.Unquote(lit.Value)
	return s, err == nil
}

// joinLits joins the non-empty string literals of exprs with '_', as
// prometheus.BuildFQName does; any non-literal fails.
func joinLits(exprs []ast.Expr) (string, bool) {
	var parts []string
	for _, e := range exprs {
		s, ok := stringLit(e)
		if !ok {
			return "", false
		}
		if s != "" {
			parts = append(parts, s)
		}
	}
	return strings.Join(parts, "_"), len(parts) > 0
}
