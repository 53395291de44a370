package secondary

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/tricopy/tricopy/blockdev"
	"github.com/tricopy/tricopy/intermediate/auth"
	"github.com/tricopy/tricopy/intermediate/client"
	"github.com/tricopy/tricopy/intermediate/wire"
)

// promotePoll is how often PromoteGroup asks the secondaries while it
// drains.
const promotePoll = 50 * time.Millisecond

// Defaults of GroupOptions.
const DefaultIntermediateTimeout = 5 * time.Second

// GroupOptions configure PromoteGroup.
type GroupOptions struct {
	// Secondary is the admin address of any secondary of the group.
	Secondary string
	// Intermediate overrides the intermediate addresses the secondaries
	// know.
	Intermediate []string
	// IntermediateTimeout bounds the attempt to reach the intermediate
	// (default DefaultIntermediateTimeout).
	IntermediateTimeout time.Duration
	// ExportDir, if set, receives each volume's unapplied batches in
	// VOLUME.unapplied (the format of ExportUnapplied).
	ExportDir string
	// By says who promotes, for the records.
	By string
	// TLS, when set, is used on every link: the admin APIs (HTTPS, the
	// secondaries must hold secondary grants) and the intermediate. The
	// certificate needs an admin grant. Nil: plain TCP.
	TLS *auth.Material
	// HTTP is the client for the admin APIs; nil means a default one (over
	// TLS when TLS is set).
	HTTP *http.Client
	// Logger receives progress; nil means slog.Default().
	Logger *slog.Logger
}

func (o GroupOptions) withDefaults() GroupOptions {
	if o.IntermediateTimeout <= 0 {
		o.IntermediateTimeout = DefaultIntermediateTimeout
	}
	if o.HTTP == nil {
		o.HTTP = &http.Client{}
		if o.TLS != nil {
			o.HTTP.Transport = &http.Transport{TLSClientConfig: o.TLS.ClientConfig(auth.RoleSecondary), ForceAttemptHTTP2: true}
		}
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	return o
}

// GroupPromotion is the outcome of PromoteGroup (the --json form of
// `tricopy promote`, documented in docs/STATUS.md).
type GroupPromotion struct {
	PromotionID string `json:"promotion_id"`
	// N is the group's point every volume was promoted at.
	N uint64 `json:"n"`
	// Drained: the intermediate fenced the old primaries at N and every
	// secondary applied everything committed; false: promoted without the
	// intermediate.
	Drained bool `json:"drained"`
	// Already: the group was promoted by this promotion before; nothing
	// changed.
	Already     bool             `json:"already"`
	TookSeconds float64          `json:"took_seconds"`
	Volumes     []PromotedVolume `json:"volumes"`
}

// PromotedVolume is one promoted secondary in GroupPromotion.
type PromotedVolume struct {
	Volume    string `json:"volume"`
	Secondary string `json:"secondary"`
	Addr      string `json:"addr"`
	Epoch     uint64 `json:"epoch"`
	// UnappliedBatches and UnappliedBytes count the staged batches after N
	// that were kept aside.
	UnappliedBatches int   `json:"unapplied_batches"`
	UnappliedBytes   int64 `json:"unapplied_bytes"`
	// Exported is the file the unapplied batches were written to.
	Exported string `json:"exported,omitempty"`
}

// peerState is one secondary as PromoteGroup sees it.
type peerState struct {
	peer Peer
	st   Status
}

// PromoteGroup promotes every secondary of a group, as `tricopy promote`
// does (see its help): it finds the group through the secondary at
// opts.Secondary, fences the old primaries at the intermediate and drains
// when the intermediate answers within opts.IntermediateTimeout, else
// promotes at the highest validated point the secondaries know; it sends
// each secondary its PromoteRequest and reports what they recorded. It is
// idempotent: on a group promoted already it changes nothing (Already), and
// it finishes an interrupted promotion with the same ID and point.
func PromoteGroup(ctx context.Context, opts GroupOptions) (*GroupPromotion, error) {
	opts = opts.withDefaults()
	log, hc := opts.Logger, opts.HTTP
	start := time.Now()
	peers, err := promotePeers(ctx, log, hc, opts)
	if err != nil {
		return nil, err
	}
	res := &GroupPromotion{}
	var prev *Promotion
	allDone := true
	for _, p := range peers {
		if pr := p.st.Promotion; pr != nil {
			if prev != nil && prev.ID != pr.ID {
				return nil, fmt.Errorf("secondaries %s and %s were promoted by different promotions (%s, %s): the group is split; promote each volume's pair by hand",
					peers[0].peer.ID, p.peer.ID, prev.ID, pr.ID)
			}
			prev = pr
			allDone = allDone && pr.Done
		} else {
			allDone = false
		}
	}
	switch {
	case prev != nil && allDone:
		res.PromotionID, res.N, res.Drained, res.Already = prev.ID, prev.N, prev.Drained, true
		log.Info("the group is promoted already", "promotion", prev.ID, "n", prev.N)
	case prev != nil:
		res.PromotionID = prev.ID
		log.Warn("finishing an interrupted promotion", "promotion", prev.ID, "n", prev.N)
	default:
		res.PromotionID = newPromotionID()
	}
	if !res.Already {
		reqs, err := promotePlan(ctx, log, hc, opts, peers, prev, res)
		if err != nil {
			return nil, err
		}
		if err := promoteAll(ctx, hc, peers, reqs); err != nil {
			return nil, err
		}
		if res.Drained {
			if err := forgetSecondaries(ctx, log, opts, peers); err != nil {
				return nil, err
			}
		}
	}
	// Report what every secondary recorded.
	for i := range peers {
		st, err := getSecondaryStatus(ctx, hc, peers[i].peer.Addr)
		if err != nil {
			return nil, fmt.Errorf("secondary %s at %s after the promotion: %w", peers[i].peer.ID, peers[i].peer.Addr, err)
		}
		pr := st.Promotion
		if pr == nil || !pr.Done {
			return nil, fmt.Errorf("secondary %s at %s is not promoted after the promotion: %s", peers[i].peer.ID, peers[i].peer.Addr, st.Reason)
		}
		v := PromotedVolume{Volume: st.Volume, Secondary: st.ID, Addr: peers[i].peer.Addr, Epoch: pr.Epoch,
			UnappliedBatches: pr.Unapplied, UnappliedBytes: pr.UnappliedBytes}
		if opts.ExportDir != "" {
			if v.Exported, err = exportUnapplied(ctx, hc, peers[i].peer.Addr, opts.ExportDir, st.Volume); err != nil {
				return nil, err
			}
		}
		res.Volumes = append(res.Volumes, v)
	}
	slices.SortFunc(res.Volumes, func(x, y PromotedVolume) int { return strings.Compare(x.Volume, y.Volume) })
	res.TookSeconds = time.Since(start).Seconds()
	return res, nil
}

// promotePeers asks the secondary at opts.Secondary for the group's
// secondaries, then each of those for the ones it knows (a secondary that
// registered after another last asked is known to the later ones), and,
// when it answers within opts.IntermediateTimeout, the intermediate, which
// knows every registered secondary and volume; it returns the status of
// each secondary; every one must answer. Without the intermediate, every
// secondary found must know its group (it learned it from the
// intermediate), else the group cannot be told whole.
func promotePeers(ctx context.Context, log *slog.Logger, hc *http.Client, opts GroupOptions) ([]peerState, error) {
	addr := opts.Secondary
	st, err := getSecondaryStatus(ctx, hc, addr)
	if err != nil {
		return nil, fmt.Errorf("secondary at %s: %w", addr, err)
	}
	byID := map[string]*peerState{st.ID: {peer: Peer{ID: st.ID, Volume: st.Volume, Addr: addr}, st: st}}
	queue := slices.Clone(st.Peers)
	var volumes []string
	membershipKnown := false
	// A promoted secondary's group is the one its promotion found: the
	// intermediate registers other secondaries since (failbacks).
	if st.Promotion != nil {
		membershipKnown = true // checked when it was promoted
		queue = append(queue, st.Promotion.Group...)
	} else if ist, err := intermediateStatus(ctx, log, opts, st); err == nil {
		membershipKnown = true
		for _, sec := range ist.GetSecondaries() {
			queue = append(queue, Peer{ID: sec.GetId(), Volume: sec.GetVolume(), Addr: sec.GetAddr()})
		}
		for _, v := range ist.GetVolumes() {
			volumes = append(volumes, v.GetName())
		}
	} else {
		log.Info("the group's membership comes from the secondaries' views: the intermediate did not answer", "err", err)
	}
	var errs []error
	for len(queue) > 0 {
		p := queue[0]
		queue = queue[1:]
		if byID[p.ID] != nil {
			continue
		}
		pst, err := getSecondaryStatus(ctx, hc, p.Addr)
		if err != nil {
			errs = append(errs, fmt.Errorf("secondary %s (volume %s) at %s: %w", p.ID, p.Volume, p.Addr, err))
			byID[p.ID] = &peerState{peer: p}
			continue
		}
		if pst.ID != p.ID {
			return nil, fmt.Errorf("the secondary at %s is %q, the group knows %q there", p.Addr, pst.ID, p.ID)
		}
		byID[p.ID] = &peerState{peer: p, st: pst}
		queue = append(queue, pst.Peers...)
	}
	if len(errs) > 0 {
		return nil, fmt.Errorf("promote needs every secondary of the group: %w", errors.Join(errs...))
	}
	// Every volume of the group needs a secondary: promoting part of a
	// group would leave the rest behind at another point.
	covered := map[string]bool{}
	for _, p := range byID {
		if !membershipKnown && !slices.ContainsFunc(p.st.Peers, func(q Peer) bool { return q.ID == p.st.ID }) {
			return nil, fmt.Errorf("secondary %s never learned its group from the intermediate, which does not answer: the group's members cannot be told, and promote refuses to promote part of a group", p.st.ID)
		}
		covered[p.st.Volume] = true
		for _, v := range p.st.GroupVolumes {
			if !slices.Contains(volumes, v) {
				volumes = append(volumes, v)
			}
		}
	}
	var missing []string
	for _, v := range volumes {
		if !covered[v] {
			missing = append(missing, v)
		}
	}
	if len(missing) > 0 {
		slices.Sort(missing)
		return nil, fmt.Errorf("no secondary the group knows follows volume(s) %s: promote refuses to promote part of the group (a secondary registered after the others last asked the intermediate is found once they ask again, every second)",
			strings.Join(missing, ", "))
	}
	out := make([]peerState, 0, len(byID))
	for _, p := range byID {
		out = append(out, *p)
	}
	slices.SortFunc(out, func(x, y peerState) int { return strings.Compare(x.peer.ID, y.peer.ID) })
	return out, nil
}

// setGroup records the group's secondaries in every request.
func setGroup(reqs []PromoteRequest, peers []peerState) {
	group := make([]Peer, len(peers))
	for i, p := range peers {
		group[i] = Peer{ID: p.peer.ID, Volume: p.st.Volume, Addr: p.peer.Addr}
	}
	for i := range reqs {
		reqs[i].Group = group
	}
}

// intermediateStatus asks the intermediate (opts.Intermediate, else the
// addresses the secondary uses) for the group's status, within
// opts.IntermediateTimeout.
func intermediateStatus(ctx context.Context, log *slog.Logger, opts GroupOptions, st Status) (*wire.StatusResponse, error) {
	addrs := opts.Intermediate
	if len(addrs) == 0 {
		addrs = st.Intermediate
	}
	if len(addrs) == 0 {
		return nil, errors.New("no intermediate address known")
	}
	cl, err := client.New(client.Config{Addrs: addrs, Group: st.Group, TLS: opts.intermediateTLS(), Logger: log})
	if err != nil {
		return nil, fmt.Errorf("intermediate: %w", err)
	}
	defer cl.Close()
	ictx, cancel := context.WithTimeout(ctx, opts.IntermediateTimeout)
	defer cancel()
	return cl.Status(ictx)
}

// promotePlan decides N and each secondary's request: through the
// intermediate (fence, then drain) when it answers, else from what the
// secondaries know.
func promotePlan(ctx context.Context, log *slog.Logger, hc *http.Client, opts GroupOptions, peers []peerState,
	prev *Promotion, res *GroupPromotion) ([]PromoteRequest, error) {
	by := opts.By
	reqs := make([]PromoteRequest, len(peers))
	if prev == nil || prev.Drained {
		resp, err := fenceAtIntermediate(ctx, log, opts, peers, res.PromotionID, by)
		switch {
		case err == nil:
			res.N, res.Drained = resp.GetSeq(), true
			vols := map[string]*wire.PromotedVolume{}
			for _, v := range resp.GetVolumes() {
				vols[v.GetName()] = v
			}
			for i, p := range peers {
				v := vols[p.st.Volume]
				if v == nil {
					return nil, fmt.Errorf("the intermediate does not know volume %s of secondary %s", p.st.Volume, p.peer.ID)
				}
				reqs[i] = PromoteRequest{ID: res.PromotionID, N: res.N, Epoch: v.GetEpoch(), Drained: true,
					VolumeSeq: v.GetLastVolumeSeq(), Seq: v.GetLastSeq(), By: by}
			}
			log.Info("the old primaries are fenced; draining", "n", res.N)
			setGroup(reqs, peers)
			if err := signBehind(opts, peers, reqs, res); err != nil {
				return nil, err
			}
			return reqs, drain(ctx, hc, peers, res.N)
		case prev != nil:
			return nil, fmt.Errorf("promotion %s fenced the old primaries at the intermediate, which is needed to finish it: %w", prev.ID, err)
		}
		log.Warn("the intermediate is unreachable: promoting at the highest validated point the secondaries know; "+
			"make sure the old primaries are down, they are fenced only once the intermediate learns the new epochs", "err", err)
	}
	// Without the intermediate.
	if prev != nil {
		res.N = prev.N
	} else {
		for _, p := range peers {
			res.N = max(res.N, p.st.AppliedSeq, p.st.ValidatedSeq)
		}
	}
	for i, p := range peers {
		epoch := p.st.Epoch + 1
		if pr := p.st.Promotion; pr != nil {
			epoch = pr.Epoch
		} else if p.st.Epoch == 0 {
			return nil, fmt.Errorf("secondary %s never learned its volume's epoch from the intermediate: it cannot be promoted without it", p.peer.ID)
		}
		reqs[i] = PromoteRequest{ID: res.PromotionID, N: res.N, Epoch: epoch, By: by}
	}
	setGroup(reqs, peers)
	if opts.TLS != nil {
		// The secondaries record the promotion at the intermediate when it
		// is back, on the admin's behalf: they carry its signature.
		chain, sig, err := opts.TLS.Sign(wire.PromotionStatement(peers[0].st.Group, res.PromotionID, by, res.N))
		if err != nil {
			return nil, err
		}
		for i := range reqs {
			reqs[i].AdminChain, reqs[i].AdminSignature = chain, sig
		}
	}
	return reqs, nil
}

// signBehind gives the admin's signature of the promotion to the requests
// of a drain whose point is below their volume's last batch (the
// intermediate held it below a primary's open copy window): such a
// promoted volume runs detached until it learned from the intermediate
// which regions the batches after the point wrote, and asks on the
// admin's behalf, as after a promotion without the intermediate.
func signBehind(opts GroupOptions, peers []peerState, reqs []PromoteRequest, res *GroupPromotion) error {
	if opts.TLS == nil {
		return nil
	}
	var chain [][]byte
	var sig []byte
	for i := range reqs {
		if reqs[i].Seq <= res.N {
			continue
		}
		if sig == nil {
			var err error
			if chain, sig, err = opts.TLS.Sign(wire.PromotionStatement(peers[0].st.Group, res.PromotionID, reqs[i].By, res.N)); err != nil {
				return err
			}
		}
		reqs[i].AdminChain, reqs[i].AdminSignature = chain, sig
	}
	return nil
}

// fenceAtIntermediate asks the intermediate to promote the group: every
// volume's epoch is raised, so the old primaries are fenced.
func fenceAtIntermediate(ctx context.Context, log *slog.Logger, opts GroupOptions, peers []peerState, id, by string) (*wire.PromoteResponse, error) {
	addrs := opts.Intermediate
	if len(addrs) == 0 {
		for _, p := range peers {
			for _, a := range p.st.Intermediate {
				if !slices.Contains(addrs, a) {
					addrs = append(addrs, a)
				}
			}
		}
	}
	if len(addrs) == 0 {
		return nil, errors.New("no intermediate address known")
	}
	cl, err := client.New(client.Config{Addrs: addrs, Group: peers[0].st.Group, TLS: opts.intermediateTLS(), Logger: log})
	if err != nil {
		return nil, fmt.Errorf("intermediate: %w", err)
	}
	defer cl.Close()
	ictx, cancel := context.WithTimeout(ctx, opts.IntermediateTimeout)
	defer cancel()
	return cl.Promote(ictx, id, by)
}

// drain waits until every secondary holds every batch of its volume up to
// n durably (staged or applied): each then rolls forward to n itself, with
// no round of the coordinator needed.
func drain(ctx context.Context, hc *http.Client, peers []peerState, n uint64) error {
	for {
		var behind []string
		for _, p := range peers {
			st, err := getSecondaryStatus(ctx, hc, p.peer.Addr)
			if err != nil {
				return fmt.Errorf("drain: secondary %s at %s: %w", p.peer.ID, p.peer.Addr, err)
			}
			if st.State == StateFailed {
				return fmt.Errorf("drain: secondary %s failed: %s", p.peer.ID, st.Reason)
			}
			if has := max(st.DurableSeq, st.AppliedSeq); has < n && st.Promotion == nil {
				behind = append(behind, fmt.Sprintf("%s staged up to %d (%s)", p.peer.ID, has, st.State))
			}
		}
		if len(behind) == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("drain to seq %d: secondaries behind: %v: %w", n, behind, ctx.Err())
		case <-time.After(promotePoll):
		}
	}
}

// promoteAll sends each secondary its request, all at once.
func promoteAll(ctx context.Context, hc *http.Client, peers []peerState, reqs []PromoteRequest) error {
	var mu sync.Mutex
	var errs []error
	var wg sync.WaitGroup
	for i, p := range peers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := postPromote(ctx, hc, p.peer.Addr, reqs[i]); err != nil {
				mu.Lock()
				errs = append(errs, fmt.Errorf("promote secondary %s (volume %s) at %s: %w", p.peer.ID, p.st.Volume, p.peer.Addr, err))
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// forgetSecondaries takes the promoted secondaries out of the group at the
// intermediate: they are primaries now, and the journal and the validated
// point must not wait for them.
func forgetSecondaries(ctx context.Context, log *slog.Logger, opts GroupOptions, peers []peerState) error {
	addrs := opts.Intermediate
	if len(addrs) == 0 {
		addrs = peers[0].st.Intermediate
	}
	cl, err := client.New(client.Config{Addrs: addrs, Group: peers[0].st.Group, TLS: opts.intermediateTLS(), Logger: log})
	if err != nil {
		return fmt.Errorf("intermediate: %w", err)
	}
	defer cl.Close()
	for _, p := range peers {
		if _, _, err := cl.RemoveSecondary(ctx, p.peer.ID); err != nil {
			return fmt.Errorf("take promoted secondary %s out of the group at the intermediate: %w", p.peer.ID, err)
		}
	}
	return nil
}

// getSecondaryStatus asks a secondary's admin API for its status.
func getSecondaryStatus(ctx context.Context, hc *http.Client, addr string) (Status, error) {
	var st Status
	body, err := adminCall(ctx, hc, http.MethodGet, addr, StatusPath, nil)
	if err != nil {
		return st, err
	}
	if err := json.Unmarshal(body, &st); err != nil {
		return st, fmt.Errorf("status of the secondary at %s: %w", addr, err)
	}
	return st, nil
}

// postPromote sends a promote request to a
func postPromote(ctx context.Context, hc *http.Client, addr string, req PromoteRequest) error {
	b, err := json.Marshal(req)
	if err != nil {
		return err
	}
	_, err = adminCall(ctx, hc, http.MethodPost, addr, PromotePath, b)
	return err
}

// AdminURL returns the URL of path on the admin API at addr, over HTTPS
// when hc's transport has a TLS configuration.
func AdminURL(hc *http.Client, addr, path string) string {
	if t, ok := hc.Transport.(*http.Transport); ok && t.TLSClientConfig != nil {
		return "https://" + addr + path
	}
	return "http://" + addr + path
}

// intermediateTLS is the TLS configuration of the clients of the
// intermediate, nil without TLS.
func (o GroupOptions) intermediateTLS() *tls.Config {
	if o.TLS == nil {
		return nil
	}
	return o.TLS.ClientConfig(auth.RoleIntermediate)
}

// adminCall makes one call to a secondary's admin API and returns the body
// of a 200 answer.
func adminCall(ctx context.Context, hc *http.Client, method, addr, path string, body []byte) ([]byte, error) {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, AdminURL(hc, addr, path), rd)
	if err != nil {
		return nil, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := hc.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s %s: %s: %s", method, path, resp.Status, bytes.TrimSpace(out))
	}
	return out, nil
}

// exportUnapplied fetches a promoted secondary's unapplied batches into
// dir/volume.unapplied, checking the stream as it goes. The export streams
// into a temporary file beside it (never whole in memory: a backlog may be
// large), which is synced and renamed into place only once the whole
// stream checked out.
func exportUnapplied(ctx context.Context, hc *http.Client, addr, dir, volume string) (_ string, err error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, AdminURL(hc, addr, UnappliedPath), nil)
	if err != nil {
		return "", err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return "", fmt.Errorf("export the unapplied batches of volume %s: %w", volume, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return "", fmt.Errorf("export the unapplied batches of volume %s: %s: %s", volume, resp.Status, bytes.TrimSpace(msg))
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("export-unapplied: %w", err)
	}
	path := filepath.Join(dir, volume+".unapplied")
	tmp, err := os.CreateTemp(dir, "."+volume+".unapplied-*")
	if err != nil {
		return "", fmt.Errorf("export-unapplied: %w", err)
	}
	defer func() {
		if err != nil {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	out := bufio.NewWriterSize(tmp, 1<<20)
	if _, err := ReadUnapplied(io.TeeReader(resp.Body, out), func(*wire.CommittedBatch) error { return nil }); err != nil {
		return "", fmt.Errorf("export the unapplied batches of volume %s: %w", volume, err)
	}
	if err := out.Flush(); err != nil {
		return "", fmt.Errorf("export-unapplied: write %s: %w", tmp.Name(), err)
	}
	if err := tmp.Sync(); err != nil {
		return "", fmt.Errorf("export-unapplied: sync %s: %w", tmp.Name(), err)
	}
	if err := tmp.Close(); err != nil {
		return "", fmt.Errorf("export-unapplied: close %s: %w", tmp.Name(), err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return "", fmt.Errorf("export-unapplied: %w", err)
	}
	if err := (blockdev.OSFS{}).SyncDir("export", dir); err != nil {
		return "", fmt.Errorf("export-unapplied: %w", err)
	}
	return path, nil
}

// newPromotionID returns a fresh random promotion ID.
func newPromotionID() string {
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(fmt.Sprintf("crypto/rand: %v", err))
	}
	return time.Now().UTC().Format("20060102T150405Z") + "-" + hex.EncodeToString(b[:])
}
