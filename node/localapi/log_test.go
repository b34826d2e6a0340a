package localapi

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/p2pimg/p2pimg/node/api"
)

// anyNode satisfies Node for routes that do not call it.
type anyNode struct{ Node }

// A request the caller got wrong is logged at debug level; a failure of
// the daemon is a warning.
func TestFailedRequestLogLevel(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		err   error
		level string
	}{
		{api.BadRequestf("layer name %q: bad", "Web"), "level=DEBUG"},
		{api.Coded(api.CodeNotFound, errors.New("layer x:1: not found")), "level=DEBUG"},
		{errors.New("disk on fire"), "level=WARN"},
	} {
		var logs bytes.Buffer
		s := New(Config{Log: slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))}, func() Node { return anyNode{} })
		h := s.plain(func(context.Context, Node, *http.Request) (any, error) { return nil, c.err })
		h(httptest.NewRecorder(), httptest.NewRequest("GET", "/v1/x", nil))
		if !strings.Contains(logs.String(), c.level) || !strings.Contains(logs.String(), "request failed") {
			t.Errorf("%v: logged %q, want %s", c.err, logs.String(), c.level)
		}
	}
}
