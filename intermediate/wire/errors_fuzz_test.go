package wire

import (
	"errors"
	"testing"

	spb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

// FuzzFromStatus decodes arbitrary bytes as the gRPC status a peer's call
// ended with (details included) and turns it into an error as every client
// does (FromStatus). Nothing panics; a status carrying an ErrorDetail gives
// an *Error with the detail's fields and the status's message, matching
// the sentinel of its code and no other; any other status comes back
// unchanged; and an *Error travels as a status and back unchanged.
func FuzzFromStatus(f *testing.F) {
	for _, e := range []*Error{
		{Code: ErrorCode_ERROR_CODE_NOT_LEADER, Msg: "not the leader", LeaderID: "n2", LeaderAddr: "127.0.0.1:7001"},
		{Code: ErrorCode_ERROR_CODE_GAP, Msg: "gap", ResumeVolumeSeq: 9},
		{Code: ErrorCode_ERROR_CODE_STALE_EPOCH, Epoch: 3},
		{Code: ErrorCode(999), Msg: "from a newer version"},
	} {
		p, err := proto.Marshal(e.GRPCStatus().Proto())
		if err != nil {
			f.Fatal(err)
		}
		f.Add(p)
	}
	other, err := anypb.New(&Block{Index: 1})
	if err != nil {
		f.Fatal(err)
	}
	for _, s := range []*spb.Status{
		{Code: 14, Message: "unavailable"},
		{Code: 0, Message: "ok"},
		{Code: 13, Message: "detail of another type", Details: []*anypb.Any{other}},
		{Code: 13, Message: "undecodable detail", Details: []*anypb.Any{{TypeUrl: "type.googleapis.com/tricopy.wire.ErrorDetail", Value: []byte{0xff}}}},
	} {
		p, err := proto.Marshal(s)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(p)
	}
	f.Fuzz(func(t *testing.T, p []byte) {
		var sp spb.Status
		if proto.Unmarshal(p, &sp) != nil {
			return
		}
		in := status.FromProto(&sp).Err()
		got := FromStatus(in)
		if in == nil {
			if got != nil {
				t.Fatalf("FromStatus(nil) = %v", got)
			}
			return
		}
		var detail *ErrorDetail
		for _, a := range sp.GetDetails() {
			d := new(ErrorDetail)
			if a.MessageIs(d) && a.UnmarshalTo(d) == nil {
				detail = d
				break
			}
		}
		if detail == nil {
			if got != in {
				t.Fatalf("status without an ErrorDetail: FromStatus gave %v (%T), want it unchanged", got, got)
			}
			return
		}
		var we *Error
		if !errors.As(got, &we) {
			t.Fatalf("status with detail %v: FromStatus gave %v (%T)", detail, got, got)
		}
		if we.Code != detail.GetCode() || we.LeaderID != detail.GetLeaderId() || we.LeaderAddr != detail.GetLeaderAddr() ||
			we.ResumeVolumeSeq != detail.GetResumeVolumeSeq() || we.Epoch != detail.GetEpoch() || we.Error() != sp.GetMessage() {
			t.Fatalf("status %v decoded as %+v", &sp, we)
		}
		for code, sentinel := range codeSentinels {
			if errors.Is(got, sentinel) != (code == we.Code) {
				t.Fatalf("error of code %v: errors.Is(%v) = %t", we.Code, sentinel, !(code == we.Code))
			}
		}
		again := FromStatus(we.GRPCStatus().Err())
		var we2 *Error
		if !errors.As(again, &we2) || we2.Code != we.Code || we2.LeaderAddr != we.LeaderAddr || we2.Error() != we.Error() {
			t.Fatalf("%+v sent again as a status: %+v", we, again)
		}
	})
}
