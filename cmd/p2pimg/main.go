// Command p2pimg is the one binary of the project: `p2pimg daemon` runs a
// host's daemon, and every other command is a client of a running daemon.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"

	"github.com/p2pimg/p2pimg/node/api"
	"github.com/p2pimg/p2pimg/node/client"
)

// Exit codes.
const (
	exitError       = 1   // the command failed
	exitUsage       = 2   // the command line itself is wrong
	exitInterrupted = 130 // SIGINT or SIGTERM (128 + SIGINT, as shells report it)
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// usageError is a mistake in the command line itself.
type usageError struct{ error }

func (u usageError) Unwrap() error { return u.error }

// reported is a failure the command's own output already describes (as
// doctor's checks do): under --json nothing more is printed, so stdout
// stays one JSON document; the exit code is still 1.
type reported struct{ error }

func (r reported) Unwrap() error { return r.error }

// run executes one command line and returns its exit code; a failure is
// reported on stderr, or under --json as {"error": {...}} on stdout.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	root := newRoot(stdout, stderr)
	root.SetArgs(args)
	err := root.ExecuteContext(ctx)
	if err == nil {
		return 0
	}
	code, e := classify(ctx, err)
	// An unknown command stops cobra before it parses flags.
	asJSON, _ := root.PersistentFlags().GetBool("json")
	asJSON = asJSON || slices.Contains(args, "--json") || slices.Contains(args, "--json=true")
	var r reported
	if asJSON && errors.As(err, &r) {
		return code
	}
	if asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		enc.Encode(struct {
			Error *api.Error `json:"error"`
		}{e})
	} else {
		fmt.Fprintln(stderr, "p2pimg:", e.Message)
	}
	return code
}

// Error codes of the CLI's own failures, beside the daemon's (api.Code*).
const (
	codeUsage       = "usage"
	codeUnavailable = "daemon_unavailable"
	codeInterrupted = "interrupted"
	codeTimeout     = "timeout"
)

// classify gives an error its exit code and its coded form.
func classify(ctx context.Context, err error) (int, *api.Error) {
	var ue usageError
	var ae *api.Error
	switch {
	case ctx.Err() != nil && errors.Is(err, context.Canceled):
		return exitInterrupted, &api.Error{Code: codeInterrupted, Message: "interrupted"}
	case ctx.Err() != nil:
		return exitInterrupted, &api.Error{Code: codeInterrupted, Message: "interrupted: " + err.Error()}
	case errors.As(err, &ue):
		return exitUsage, &api.Error{Code: codeUsage, Message: err.Error()}
	case isCobraUsage(err):
		return exitUsage, &api.Error{Code: codeUsage, Message: err.Error() + " (see `p2pimg --help`)"}
	case errors.Is(err, client.ErrDaemonDown):
		return exitError, &api.Error{Code: codeUnavailable, Message: err.Error()}
	case errors.Is(err, context.DeadlineExceeded):
		return exitError, &api.Error{Code: codeTimeout, Message: err.Error()}
	case errors.As(err, &ae):
		return exitError, &api.Error{Code: ae.Code, Message: err.Error()}
	}
	return exitError, &api.Error{Code: api.CodeInternal, Message: err.Error()}
}

// isCobraUsage recognises the command-line errors cobra makes itself
// (it has no types for them).
func isCobraUsage(err error) bool {
	m := err.Error()
	for _, p := range []string{"unknown command ", "required flag(s) ", "if any flags in the group ", "invalid argument "} {
		if strings.HasPrefix(m, p) {
			return true
		}
	}
	return false
}
