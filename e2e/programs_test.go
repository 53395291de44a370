package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestPrograms runs sqlite3, git and tar on a mount, checks their work,
// unmounts, checks the volume with fsck, mounts it again, checks their work
// again, and checks the volume again.
func TestPrograms(t *testing.T) {
	requireFUSE(t, "sqlite3", "git", "tar", "diff")
	src := sourceTree(t)
	data := filepath.Join(t.TempDir(), "volume")
	mnt := t.TempDir()
	format(t, data, "1GiB")
	fsckClean(t, data)

	m := startMount(t, "a", data, mnt)
	db := buildSQLite(t, filepath.Join(mnt, "db"))
	repo := buildGit(t, filepath.Join(mnt, "repo"))
	extract(t, src, filepath.Join(mnt, "tree"))
	m.stop(t)
	fsckClean(t, data)

	m = startMount(t, "a", data, mnt)
	db.verify(t)
	repo.verify(t)
	verifyTree(t, src, filepath.Join(mnt, "tree"))
	m.stop(t)
	r := fsckClean(t, data)
	if want := uint64(src.entries) / 2; r.Files < want {
		t.Errorf("fsck counts %d files, want at least %d", r.Files, want)
	}
}

// sqliteRows is the number of rows buildSQLite inserts, in sqliteTxs
// transactions.
const (
	sqliteRows = 10000
	sqliteTxs  = 4
)

// sqliteDB is a database built by buildSQLite, with the figures it must
// keep.
type sqliteDB struct {
	path    string
	figures string // output of sqliteFigures
}

// sqliteFigures is a query whose output a database must keep: the number
// of rows, a sum over a column, and the bytes of the blobs.
const sqliteFigures = "SELECT count(*), sum(n), sum(length(payload)), max(name) FROM items;"

// buildSQLite creates a database in WAL mode in dir with sqlite3 and fills
// it with sqliteRows rows in a few transactions, then updates some of
// them, and checks it with PRAGMA integrity_check.
func buildSQLite(t testing.TB, dir string) *sqliteDB {
	t.Helper()
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	db := &sqliteDB{path: filepath.Join(dir, "test.db")}
	var script strings.Builder
	script.WriteString(`PRAGMA journal_mode=WAL;
PRAGMA synchronous=FULL;
CREATE TABLE items(id INTEGER PRIMARY KEY, name TEXT NOT NULL, n INTEGER NOT NULL, payload BLOB NOT NULL);
CREATE INDEX items_name ON items(name);
`)
	per := sqliteRows / sqliteTxs
	for i := 0; i < sqliteTxs; i++ {
		fmt.Fprintf(&script, `BEGIN;
WITH RECURSIVE c(i) AS (SELECT %d UNION ALL SELECT i+1 FROM c WHERE i < %d)
INSERT INTO items(id, name, n, payload) SELECT i, printf('item-%%05d', i), i*7 %% 1000, randomblob(100 + i %% 400) FROM c;
COMMIT;
`, i*per+1, (i+1)*per)
	}
	script.WriteString(`BEGIN;
UPDATE items SET n = n + 1, payload = randomblob(50) WHERE id % 13 = 0;
DELETE FROM items WHERE id % 1000 = 0;
INSERT INTO items(id, name, n, payload) SELECT id + 100000, name || '-again', n, payload FROM items WHERE id % 1000 = 1;
COMMIT;
PRAGMA journal_mode;
`)
	cmd := command(t, dir, "sqlite3", "-batch", "-bail", db.path)
	cmd.Stdin = strings.NewReader(script.String())
	if out := strings.Fields(runCmd(t, cmd)); len(out) != 2 || out[0] != "wal" || out[1] != "wal" {
		t.Fatalf("sqlite3: journal modes %q, want wal twice", out)
	}
	db.checkIntegrity(t)
	db.figures = run(t, dir, "sqlite3", "-batch", "-bail", db.path, sqliteFigures)
	if n, _, _ := strings.Cut(db.figures, "|"); n != fmt.Sprint(sqliteRows) {
		t.Fatalf("sqlite3: %s: %q, want %d rows", sqliteFigures, db.figures, sqliteRows)
	}
	t.Logf("sqlite3: built %s: %s", db.path, strings.TrimSpace(db.figures))
	return db
}

// checkIntegrity fails t unless PRAGMA integrity_check says ok.
func (db *sqliteDB) checkIntegrity(t testing.TB) {
	t.Helper()
	if out := run(t, filepath.Dir(db.path), "sqlite3", "-batch", "-bail", db.path, "PRAGMA integrity_check;"); strings.TrimSpace(out) != "ok" {
		t.Fatalf("sqlite3 %s: PRAGMA integrity_check: %s", db.path, clip(out))
	}
}

// verify checks the database again: integrity, WAL mode, and figures.
func (db *sqliteDB) verify(t testing.TB) {
	t.Helper()
	db.checkIntegrity(t)
	dir := filepath.Dir(db.path)
	if out := run(t, dir, "sqlite3", "-batch", "-bail", db.path, "PRAGMA journal_mode;"); strings.TrimSpace(out) != "wal" {
		t.Errorf("sqlite3: journal mode %q after remount, want wal", strings.TrimSpace(out))
	}
	if out := run(t, dir, "sqlite3", "-batch", "-bail", db.path, sqliteFigures); out != db.figures {
		t.Errorf("sqlite3: %s after remount: %q, want %q", sqliteFigures, out, db.figures)
	}
}

// gitRepo is a repository built by buildGit.
type gitRepo struct {
	dir  string
	head string // commit id of HEAD
}

// goFuseSource returns the directory of the go-fuse module source, the
// source tree committed by buildGit.
func goFuseSource(t testing.TB) string {
	t.Helper()
	dir := filepath.Join(workDir, "go-fuse-src")
	if _, err := os.Stat(dir); err == nil {
		return dir
	}
	// Not childEnv: go needs the user's HOME to find its caches.
	out, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", "github.com/hanwen/go-fuse/v2").Output()
	modDir := strings.TrimSpace(string(out))
	if err != nil || modDir == "" {
		t.Fatalf("go list -m github.com/hanwen/go-fuse/v2: %v (%q): the module should be in the module cache", err, out)
	}
	// A copy, so that the files are writable (the module cache is
	// read-only) and git sees ordinary permissions.
	if err := copyTree(modDir, dir); err != nil {
		t.Fatalf("copy %s: %v", modDir, err)
	}
	return dir
}

// buildGit copies the go-fuse source into dir and commits it with git
// (init, add, commit), then changes, renames and removes files in a second
// commit, packs the repository (gc), and checks it with git fsck --full.
func buildGit(t testing.TB, dir string) *gitRepo {
	t.Helper()
	if err := copyTree(goFuseSource(t), dir); err != nil {
		t.Fatalf("copy the go-fuse source to the mount: %v", err)
	}
	git := func(args ...string) string { t.Helper(); return run(t, dir, "git", args...) }
	git("init", "-q", "-b", "main")
	git("add", "-A")
	git("commit", "-q", "-m", "import go-fuse")
	if err := os.WriteFile(filepath.Join(dir, "README.md"), []byte("changed on a tricopy mount\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	git("mv", "fuse/api.go", "fuse/api_renamed.go")
	git("rm", "-q", "fuse/print.go")
	git("commit", "-q", "-a", "-m", "change, rename, remove")
	git("gc", "-q", "--prune=now")
	r := &gitRepo{dir: dir, head: strings.TrimSpace(git("rev-parse", "HEAD"))}
	r.check(t)
	t.Logf("git: committed %s in %s", r.head, dir)
	return r
}

// check runs git fsck --full --strict and fails t unless the work tree is
// clean and HEAD is the second commit.
func (r *gitRepo) check(t testing.TB) {
	t.Helper()
	run(t, r.dir, "git", "fsck", "--full", "--strict", "--no-progress")
	if out := run(t, r.dir, "git", "status", "--porcelain"); out != "" {
		t.Errorf("git status in %s: not clean:\n%s", r.dir, clip(out))
	}
	if out := strings.Fields(run(t, r.dir, "git", "log", "--format=%H")); len(out) != 2 || out[0] != r.head {
		t.Errorf("git log in %s: %q, want 2 commits ending at %s", r.dir, out, r.head)
	}
}

// verify checks the repository again after a remount.
func (r *gitRepo) verify(t testing.TB) {
	t.Helper()
	r.check(t)
	if diff := run(t, r.dir, "git", "diff", "HEAD", "--stat"); diff != "" {
		t.Errorf("git diff HEAD after remount:\n%s", clip(diff))
	}
}

// extract extracts the tarball of src into dst (created) with tar, then
// checks the result against src.
func extract(t testing.TB, src *tree, dst string) {
	t.Helper()
	if err := os.Mkdir(dst, 0o755); err != nil {
		t.Fatal(err)
	}
	run(t, "", "tar", "-xf", src.tarball, "-C", dst)
	verifyTree(t, src, dst)
}

// verifyTree fails t unless dst holds the same tree as src: contents by
// diff -r, metadata by compareTrees.
func verifyTree(t testing.TB, src *tree, dst string) {
	t.Helper()
	run(t, "", "diff", "-r", "--no-dereference", src.dir, dst)
	compareTrees(t, src.dir, dst)
	t.Logf("tar: %s holds the tree of seed %d", dst, src.seed)
}
