package blockdev

import (
	"bytes"
	"errors"
	"io/fs"
	"math/rand/v2"
	"os"
	"testing"
)

func memCreate(t *testing.T, m *MemFS, name string, data string) File {
	t.Helper()
	f, err := m.OpenFile("t", name, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	if data != "" {
		if _, err := f.WriteAt([]byte(data), 0); err != nil {
			t.Fatal(err)
		}
	}
	return f
}

func memContent(t *testing.T, m *MemFS, name string) (string, bool) {
	t.Helper()
	b, err := readSmallFile(m, "t", name, 1<<20)
	if errors.Is(err, fs.ErrNotExist) {
		return "", false
	}
	if err != nil {
		t.Fatal(err)
	}
	return string(b), true
}

func TestMemFSCrash(t *testing.T) {
	m := NewMemFS()
	if err := m.MkdirAll("t", "/d", 0o700); err != nil {
		t.Fatal(err)
	}
	if err := m.SyncDir("t", "/"); err != nil {
		t.Fatal(err)
	}
	f := memCreate(t, m, "/d/synced", "one")
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	memCreate(t, m, "/d/unsynced", "two").Close()
	if err := m.SyncDir("t", "/d"); err != nil {
		t.Fatal(err)
	}
	// After the SyncDir: a write not synced, a file whose entry is not.
	if _, err := f.WriteAt([]byte("ONE!"), 0); err != nil {
		t.Fatal(err)
	}
	g := memCreate(t, m, "/d/new", "three")
	if err := g.Sync(); err != nil {
		t.Fatal(err)
	}
	if err := m.Rename("t", "/d/unsynced", "/d/renamed"); err != nil {
		t.Fatal(err)
	}
	if err := m.Remove("t", "/d/synced"); err != nil {
		t.Fatal(err)
	}

	m.Crash()
	for name, want := range map[string]string{"/d/synced": "one", "/d/unsynced": ""} {
		if got, ok := memContent(t, m, name); !ok || got != want {
			t.Errorf("%s = %q, %v; want %q", name, got, ok, want)
		}
	}
	for _, name := range []string{"/d/new", "/d/renamed"} {
		if _, ok := memContent(t, m, name); ok {
			t.Errorf("%s survived the crash", name)
		}
	}
	if _, err := f.ReadAt(make([]byte, 1), 0); !errors.Is(err, ErrCrashed) {
		t.Errorf("read of a file opened before the crash = %v, want ErrCrashed", err)
	}
	if err := f.Close(); err != nil {
		t.Errorf("close of a file opened before the crash = %v", err)
	}
	names, err := m.ReadDir("t", "/d")
	if err != nil || len(names) != 2 {
		t.Errorf("ReadDir = %v, %v", names, err)
	}
}

func TestMemFSSyncedRenameSurvives(t *testing.T) {
	m := NewMemFS()
	f := memCreate(t, m, "/a.tmp", "new")
	f.Sync()
	memCreate(t, m, "/a", "old").Sync()
	m.SyncDir("t", "/")
	if err := m.Rename("t", "/a.tmp", "/a"); err != nil {
		t.Fatal(err)
	}
	if err := m.SyncDir("t", "/"); err != nil {
		t.Fatal(err)
	}
	m.Crash()
	if got, _ := memContent(t, m, "/a"); got != "new" {
		t.Fatalf("/a = %q, want new", got)
	}
	if _, ok := memContent(t, m, "/a.tmp"); ok {
		t.Fatal("/a.tmp survived its rename")
	}
}

// TestMemFSCrashRandom checks that CrashRandom keeps only states a page
// cache could leave: each page of the unsynced writes is old or new, and
// the synced content stays.
func TestMemFSCrashRandom(t *testing.T) {
	seed := testSeed(t)
	rng := rand.New(rand.NewPCG(seed, 0))
	old := bytes.Repeat([]byte{'o'}, 3*memPageSize)
	kept, dropped := 0, 0
	for range 50 {
		m := NewMemFS()
		f := memCreate(t, m, "/f", string(old))
		f.Sync()
		m.SyncDir("t", "/")
		// An unaligned write over three pages and past the end.
		newData := bytes.Repeat([]byte{'n'}, 3*memPageSize)
		f.WriteAt(newData, memPageSize/2)
		m.CrashRandom(rng)
		got, _ := memContent(t, m, "/f")
		if len(got) < len(old) {
			t.Fatalf("file shrank to %d bytes", len(got))
		}
		for p := 0; p < len(got); p += memPageSize {
			page := got[p:min(p+memPageSize, len(got))]
			lo := max(p, memPageSize/2)
			// Within the written range, a page is wholly old or wholly new.
			region := page[lo-p:]
			if len(region) == 0 {
				continue
			}
			switch {
			case region == string(bytes.Repeat([]byte{'n'}, len(region))):
				kept++
			case p < len(old) && region == string(old[lo:min(p+memPageSize, len(got))]):
				dropped++
			case p >= len(old) && region == string(make([]byte, len(region))):
				dropped++
			default:
				t.Fatalf("page at %d is torn: %q", p, region[:16])
			}
		}
	}
	if kept == 0 || dropped == 0 {
		t.Fatalf("kept %d pages, dropped %d: want some of each", kept, dropped)
	}
}

func TestMemFSFailAfter(t *testing.T) {
	m := NewMemFS()
	f := memCreate(t, m, "/f", "")
	start := m.MutatingOps()
	m.FailAfter(2)
	if _, err := f.WriteAt([]byte("a"), 0); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	if m.Crashed() {
		t.Fatal("crashed before the crash point")
	}
	if _, err := f.WriteAt([]byte("b"), 1); !errors.Is(err, ErrCrashed) {
		t.Fatalf("third write = %v, want ErrCrashed", err)
	}
	// Once crashed, every operation fails, reads included.
	if _, err := f.ReadAt(make([]byte, 1), 0); !errors.Is(err, ErrCrashed) {
		t.Fatalf("read after crash point = %v, want ErrCrashed", err)
	}
	if _, err := m.Stat("t", "/f"); !errors.Is(err, ErrCrashed) {
		t.Fatalf("stat after crash point = %v, want ErrCrashed", err)
	}
	if !m.Crashed() || m.MutatingOps()-start != 3 {
		t.Fatalf("Crashed() = %v, ops = %d", m.Crashed(), m.MutatingOps()-start)
	}
	m.Crash()
	if got, _ := memContent(t, m, "/f"); got != "" {
		// The file's entry was never synced.
		t.Fatalf("/f = %q after crash", got)
	}
	if _, err := m.Stat("t", "/"); err != nil {
		t.Fatalf("stat after Crash = %v", err)
	}
}

func TestMemFSErrors(t *testing.T) {
	m := NewMemFS()
	if _, err := m.OpenFile("t", "/missing/f", os.O_RDWR|os.O_CREATE, 0); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("create in missing dir = %v", err)
	}
	memCreate(t, m, "/f", "x").Close()
	if _, err := m.OpenFile("t", "/f", os.O_RDWR|os.O_CREATE|os.O_EXCL, 0); !errors.Is(err, fs.ErrExist) {
		t.Errorf("O_EXCL on existing file = %v", err)
	}
	if _, err := m.OpenFile("t", "/f", os.O_RDWR|os.O_APPEND, 0); err == nil {
		t.Error("O_APPEND accepted")
	}
	if err := m.MkdirAll("t", "/f/g", 0o700); err == nil {
		t.Error("MkdirAll through a file succeeded")
	}
	if err := m.MkdirAll("t", "/d/e", 0o700); err != nil {
		t.Fatal(err)
	}
	if err := m.Remove("t", "/d"); err == nil {
		t.Error("Remove of a non-empty directory succeeded")
	}
	r, err := m.OpenFile("t", "/f", os.O_RDONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.WriteAt([]byte("y"), 0); err == nil {
		t.Error("write to a read-only file succeeded")
	}
	r.Close()
	if err := r.Close(); !errors.Is(err, fs.ErrClosed) {
		t.Errorf("second Close = %v", err)
	}
	l, err := m.Lock("t", "/lock")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m.Lock("t", "/lock"); !errors.Is(err, ErrInUse) {
		t.Errorf("second Lock = %v, want ErrInUse", err)
	}
	l.Close()
	if _, err = m.Lock("t", "/lock"); err != nil {
		t.Errorf("Lock after release = %v", err)
	}
	m.Crash()
	if _, err := m.Lock("t", "/lock"); err != nil {
		t.Errorf("Lock after crash = %v", err)
	}
}

func TestMemVolumeCrash(t *testing.T) {
	ctx := t.Context()
	v := NewMem(4)
	b := func(stamp uint64) *Batch {
		return &Batch{Writes: []Write{{Index: stamp % 4, Data: stampBlock(stamp, stamp%4)}}}
	}
	m := newModel(4)
	v.Apply(ctx, b(1), ApplyOptions{})
	v.Apply(ctx, b(2), ApplyOptions{Sync: true})
	m.apply(b(1))
	m.apply(b(2))
	synced := m.clone()
	v.Apply(ctx, b(3), ApplyOptions{})
	v.Apply(ctx, b(4), ApplyOptions{})
	if v.Unsynced() != 2 {
		t.Fatalf("Unsynced() = %d, want 2", v.Unsynced())
	}
	c := v.Clone()
	v.Crash()
	synced.check(t, v)
	if v.Unsynced() != 0 {
		t.Fatalf("Unsynced() after Crash = %d", v.Unsynced())
	}
	// The clone kept the unsynced batches; keep one of them.
	c.CrashKeep(1)
	synced.apply(b(3))
	synced.check(t, c)
	c.Close()
	if err := c.Apply(ctx, b(5), ApplyOptions{}); !errors.Is(err, ErrClosed) {
		t.Fatalf("Apply after Close = %v", err)
	}
	c.Crash()
	synced.check(t, c)
}

func TestCompare(t *testing.T) {
	ctx := t.Context()
	a, b := NewMem(8), NewMem(8)
	if first, eq, err := Compare(a, b); !eq || err != nil {
		t.Fatalf("Compare of empty volumes = %d, %v, %v", first, eq, err)
	}
	b.Apply(ctx, &Batch{Writes: []Write{{Index: 5, Data: stampBlock(1, 5)}}}, ApplyOptions{})
	if first, eq, err := Compare(a, b); eq || first != 5 || err != nil {
		t.Fatalf("Compare = %d, %v, %v; want 5, false", first, eq, err)
	}
	if first, eq, _ := Compare(a, NewMem(6)); eq || first != 6 {
		t.Fatalf("Compare of different sizes = %d, %v", first, eq)
	}
}
