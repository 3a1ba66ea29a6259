package cniplugin

import (
	"errors"
	"fmt"

	"github.com/containernetworking/cni/pkg/types"
)

// CNI error codes. The well-known ones mirror the spec (SPEC.md "Error");
// 100 and up are plumb's own and documented in the README.
const (
	CodeIncompatibleVersion uint = types.ErrIncompatibleCNIVersion // 1
	CodeUnsupportedField    uint = types.ErrUnsupportedField       // 2
	CodeUnknownContainer    uint = types.ErrUnknownContainer       // 3
	CodeInvalidEnv          uint = types.ErrInvalidEnvironmentVariables
	CodeIO                  uint = types.ErrIOFailure
	CodeDecode              uint = types.ErrDecodingFailure
	CodeInvalidConfig       uint = types.ErrInvalidNetworkConfig
	CodeInvalidNetNS        uint = types.ErrInvalidNetNS
	CodeTryAgainLater       uint = types.ErrTryAgainLater
	CodeNotAvailable        uint = 50 // types.ErrPluginNotAvailable in newer libraries
	CodeLimited             uint = 51 // types.ErrLimitedConnectivity
	CodeInternal            uint = types.ErrInternal

	// CodeExhausted: no free address left in a range set.
	CodeExhausted uint = 100
	// CodeAddressUnavailable: a requested address is taken or outside the ranges.
	CodeAddressUnavailable uint = 101
)

// codedError attaches a CNI error code to an error without hiding its chain.
type codedError struct {
	code uint
	err  error
}

func (e *codedError) Error() string { return e.err.Error() }
func (e *codedError) Unwrap() error { return e.err }

// WithCode marks err with a CNI error code; the edge turns it into CNI error JSON.
// Context added by callers around it is kept in the final message.
func WithCode(code uint, err error) error {
	if err == nil {
		return nil
	}
	return &codedError{code: code, err: err}
}

// Errorf is fmt.Errorf plus a CNI error code.
func Errorf(code uint, format string, args ...any) error {
	return WithCode(code, fmt.Errorf(format, args...))
}

// InvalidConfig is Errorf with code 7.
func InvalidConfig(format string, args ...any) error {
	return Errorf(CodeInvalidConfig, format, args...)
}

// Code reports the CNI code carried by err: the innermost explicit code wins
// over a *types.Error from a delegated plugin; 999 when none.
func Code(err error) uint {
	var ce *codedError
	if errors.As(err, &ce) {
		return ce.code
	}
	var te *types.Error
	if errors.As(err, &te) {
		return te.Code
	}
	return CodeInternal
}

// ToCNI converts any error into the CNI error object printed on stdout. The
// message is the whole chain, so context added around a delegated plugin's
// error is not lost (skel would drop it).
func ToCNI(err error) *types.Error {
	if err == nil {
		return nil
	}
	var te *types.Error
	if errors.As(err, &te) && te == err {
		return te
	}
	details := ""
	if errors.As(err, &te) {
		details = te.Details
	}
	return types.NewError(Code(err), err.Error(), details)
}
