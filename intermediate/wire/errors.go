package wire

import (
	"errors"
	"fmt"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/protoadapt"
)

// Sentinel errors of the protocol. An *Error matches the sentinel of its code
// with errors.Is, on the server that made it and on the client that decoded
// it from a gRPC status.
var (
	// ErrNotLeader: the node is not the leader; the *Error names the leader
	// when it is known.
	ErrNotLeader = errors.New("not the leader")
	// ErrGap: the batch skips a volume seq; the *Error says where to resume.
	ErrGap = errors.New("volume seq gap")
	// ErrStaleEpoch: the batch carries an epoch other than the volume's
	// current one (the group was promoted elsewhere).
	ErrStaleEpoch = errors.New("stale epoch")
	// ErrJournalFull: the journal is over its budget.
	ErrJournalFull = errors.New("journal full")
	// ErrBadCRC: a checksum does not match.
	ErrBadCRC = errors.New("checksum mismatch")
	// ErrTooLarge: a message or entry is over the size limit.
	ErrTooLarge = errors.New("message too large")
	// ErrWrongGroup: the request names another consistency group.
	ErrWrongGroup = errors.New("wrong group")
	// ErrVolumeMismatch: the block count differs from the registered one.
	ErrVolumeMismatch = errors.New("volume size mismatch")
	// ErrBadRequest: a malformed request.
	ErrBadRequest = errors.New("bad request")
	// ErrUnknownVolume: the volume is not registered.
	ErrUnknownVolume = errors.New("unknown volume")
	// ErrFailed: the node stopped after a fatal error.
	ErrFailed = errors.New("node failed")
	// ErrStaleSession: a newer Submit stream of the volume was opened, so
	// the batches of this one are no longer accepted.
	ErrStaleSession = errors.New("stale submit session")
	// ErrPermissionDenied: the caller's certificate does not grant the call
	// (or the caller has none while the node requires TLS).
	ErrPermissionDenied = errors.New("permission denied")
)

var codeSentinels = map[ErrorCode]error{
	ErrorCode_ERROR_CODE_NOT_LEADER:        ErrNotLeader,
	ErrorCode_ERROR_CODE_GAP:               ErrGap,
	ErrorCode_ERROR_CODE_STALE_EPOCH:       ErrStaleEpoch,
	ErrorCode_ERROR_CODE_JOURNAL_FULL:      ErrJournalFull,
	ErrorCode_ERROR_CODE_BAD_CRC:           ErrBadCRC,
	ErrorCode_ERROR_CODE_TOO_LARGE:         ErrTooLarge,
	ErrorCode_ERROR_CODE_WRONG_GROUP:       ErrWrongGroup,
	ErrorCode_ERROR_CODE_VOLUME_MISMATCH:   ErrVolumeMismatch,
	ErrorCode_ERROR_CODE_BAD_REQUEST:       ErrBadRequest,
	ErrorCode_ERROR_CODE_UNKNOWN_VOLUME:    ErrUnknownVolume,
	ErrorCode_ERROR_CODE_FAILED:            ErrFailed,
	ErrorCode_ERROR_CODE_STALE_SESSION:     ErrStaleSession,
	ErrorCode_ERROR_CODE_PERMISSION_DENIED: ErrPermissionDenied,
}

var codeGRPC = map[ErrorCode]codes.Code{
	ErrorCode_ERROR_CODE_NOT_LEADER:        codes.Unavailable,
	ErrorCode_ERROR_CODE_GAP:               codes.OutOfRange,
	ErrorCode_ERROR_CODE_STALE_EPOCH:       codes.FailedPrecondition,
	ErrorCode_ERROR_CODE_JOURNAL_FULL:      codes.ResourceExhausted,
	ErrorCode_ERROR_CODE_BAD_CRC:           codes.DataLoss,
	ErrorCode_ERROR_CODE_TOO_LARGE:         codes.ResourceExhausted,
	ErrorCode_ERROR_CODE_WRONG_GROUP:       codes.InvalidArgument,
	ErrorCode_ERROR_CODE_VOLUME_MISMATCH:   codes.FailedPrecondition,
	ErrorCode_ERROR_CODE_BAD_REQUEST:       codes.InvalidArgument,
	ErrorCode_ERROR_CODE_UNKNOWN_VOLUME:    codes.NotFound,
	ErrorCode_ERROR_CODE_FAILED:            codes.Internal,
	ErrorCode_ERROR_CODE_STALE_SESSION:     codes.Aborted,
	ErrorCode_ERROR_CODE_PERMISSION_DENIED: codes.PermissionDenied,
}

// Error is a refusal with its code and the facts a client needs to act on
// it (where the leader is, where to resume, the current epoch).
type Error struct {
	Code            ErrorCode
	Msg             string
	LeaderID        string
	LeaderAddr      string
	ResumeVolumeSeq uint64
	Epoch           uint64

	// remote is set on an Error decoded from a status: Msg is then the
	// complete text the server made.
	remote bool
}

// Error implements error.
func (e *Error) Error() string {
	if e.remote {
		return e.Msg
	}
	s := e.Msg
	if s == "" {
		if sentinel, ok := codeSentinels[e.Code]; ok {
			s = sentinel.Error()
		} else {
			s = e.Code.String()
		}
	}
	switch e.Code {
	case ErrorCode_ERROR_CODE_NOT_LEADER:
		if e.LeaderID != "" {
			s += fmt.Sprintf(" (leader %s at %q)", e.LeaderID, e.LeaderAddr)
		}
	case ErrorCode_ERROR_CODE_GAP:
		s += fmt.Sprintf(" (resume at volume seq %d)", e.ResumeVolumeSeq)
	case ErrorCode_ERROR_CODE_STALE_EPOCH:
		s += fmt.Sprintf(" (current epoch %d)", e.Epoch)
	}
	return s
}

// Is matches the sentinel of e's code.
func (e *Error) Is(target error) bool {
	return codeSentinels[e.Code] == target
}

// Errorf makes an *Error with a formatted message.
func Errorf(code ErrorCode, format string, args ...any) *Error {
	return &Error{Code: code, Msg: fmt.Sprintf(format, args...)}
}

// GRPCStatus makes e travel as a gRPC status with an ErrorDetail; grpc-go
// calls it when a handler returns e.
func (e *Error) GRPCStatus() *status.Status {
	c, ok := codeGRPC[e.Code]
	if !ok {
		c = codes.Unknown
	}
	st := status.New(c, e.Error())
	withDetail, err := st.WithDetails(protoadapt.MessageV1Of(&ErrorDetail{
		Code:            e.Code,
		LeaderId:        e.LeaderID,
		LeaderAddr:      e.LeaderAddr,
		ResumeVolumeSeq: e.ResumeVolumeSeq,
		Epoch:           e.Epoch,
	}))
	if err != nil {
		return st
	}
	return withDetail
}

// FromStatus turns an error returned by a gRPC call back into an *Error when
// the status carries an ErrorDetail; otherwise it returns err unchanged.
func FromStatus(err error) error {
	if err == nil {
		return nil
	}
	st, ok := status.FromError(err)
	if !ok {
		return err
	}
	for _, d := range st.Details() {
		if det, ok := d.(*ErrorDetail); ok {
			return &Error{
				Code:            det.GetCode(),
				Msg:             st.Message(),
				LeaderID:        det.GetLeaderId(),
				LeaderAddr:      det.GetLeaderAddr(),
				ResumeVolumeSeq: det.GetResumeVolumeSeq(),
				Epoch:           det.GetEpoch(),
				remote:          true,
			}
		}
	}
	return err
}
