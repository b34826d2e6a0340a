package api

import (
	"errors"
	"fmt"
)

// CodedError carries the API error code of a failure from the service that
// knows it (a bad argument, a conflict) to the local API, which answers
// with it.
type CodedError struct {
	Code string
	Err  error
}

func (e *CodedError) Error() string { return e.Err.Error() }
func (e *CodedError) Unwrap() error { return e.Err }

// Coded marks err with an API error code.
func Coded(code string, err error) error { return &CodedError{Code: code, Err: err} }

// BadRequest marks err as the caller's mistake.
func BadRequest(err error) error { return Coded(CodeBadRequest, err) }

// BadRequestf is BadRequest of a formatted error.
func BadRequestf(format string, a ...any) error { return BadRequest(fmt.Errorf(format, a...)) }

// Conflict marks err as a request refused by the current state.
func Conflict(err error) error { return Coded(CodeConflict, err) }

// Conflictf is Conflict of a formatted error.
func Conflictf(format string, a ...any) error { return Conflict(fmt.Errorf(format, a...)) }

// CodeOf is the code err was marked with ("" when none).
func CodeOf(err error) string {
	var ce *CodedError
	if errors.As(err, &ce) {
		return ce.Code
	}
	return ""
}

// Emit receives the events of a long operation.
type Emit func(Event)
