package node

import (
	"errors"
	"fmt"
	"strings"
	"syscall"

	"github.com/p2pimg/p2pimg/chunk"
	"github.com/p2pimg/p2pimg/chunk/tree"
	"github.com/p2pimg/p2pimg/node/api"
)

// codedError carries the API error code of a failure.
type codedError struct {
	code string
	err  error
}

func (e *codedError) Error() string { return e.err.Error() }
func (e *codedError) Unwrap() error { return e.err }

func badRequest(err error) error { return &codedError{api.CodeBadRequest, err} }

func badRequestf(format string, a ...any) error { return badRequest(fmt.Errorf(format, a...)) }

// apiError turns any error into the API's form.
func apiError(err error) *api.Error {
	var ce *codedError
	code := api.CodeInternal
	switch {
	case errors.As(err, &ce):
		code = ce.code
	case errors.Is(err, chunk.ErrNotFound):
		code = api.CodeNotFound
	case errors.Is(err, tree.ErrNotEmpty):
		code = api.CodeConflict
	case errors.Is(err, syscall.ENOSPC) || strings.Contains(err.Error(), "no space left on device"):
		code = api.CodeNoSpace
	}
	msg := err.Error()
	if code == api.CodeNoSpace {
		msg += " (the disk holding the data directory is full: free space and run the command again; nothing was half-written)"
	}
	return &api.Error{Code: code, Message: msg}
}
