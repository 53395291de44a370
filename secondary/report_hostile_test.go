package secondary

import (
	"strings"
	"testing"
	"unicode/utf8"

	"google.golang.org/protobuf/proto"

	"github.com/tricopy/tricopy/intermediate/wire"
)

// TestReportReason: whatever a failure's error says (long, multi-byte
// characters at the cut, bytes that are not UTF-8, as a path may hold),
// the reason reported to the leader is valid UTF-8, at most
// maxReportReason bytes, a prefix of the error when cut, and its report
// encodes.
func TestReportReason(t *testing.T) {
	for _, reason := range []string{
		"",
		"short",
		strings.Repeat("x", maxReportReason),
		strings.Repeat("x", maxReportReason+1),
		strings.Repeat("é", maxReportReason),
		strings.Repeat("x", maxReportReason-3) + "日本語",
		"open \"/data/\xff\xfe/stage\": no such file",
		strings.Repeat("\xff", 5000),
	} {
		got := reportReason(reason)
		if !utf8.ValidString(got) || len(got) > maxReportReason {
			t.Errorf("reason of %d bytes reported as %d bytes (valid UTF-8: %t)", len(reason), len(got), utf8.ValidString(got))
		}
		if utf8.ValidString(reason) && len(reason) <= maxReportReason && got != reason {
			t.Errorf("reason %q reported as %q", reason, got)
		}
		if valid := strings.ToValidUTF8(reason, "\uFFFD"); len(valid) > maxReportReason && !strings.HasPrefix(valid, strings.TrimSuffix(got, "…")) {
			t.Errorf("reason of %d bytes cut to %q, not a prefix", len(reason), got)
		}
		m := &wire.CoordinateRequest{Msg: &wire.CoordinateRequest_Report{Report: &wire.SecondaryReport{State: StateFailed, Reason: got}}}
		if _, err := proto.Marshal(m); err != nil {
			t.Errorf("report of reason %q: %v", got, err)
		}
	}
}
