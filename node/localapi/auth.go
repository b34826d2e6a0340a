package localapi

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/p2pimg/p2pimg/node/api"
	"github.com/p2pimg/p2pimg/node/caller"
)

// ConnContext is http.Server.ConnContext for the API's unix socket: each
// request's context carries the credentials the kernel gives for the
// process at the other end (SO_PEERCRED), fixed when it connected. A
// connection whose credentials cannot be read gets an unknown caller,
// which may do nothing privileged.
func ConnContext(ctx context.Context, c net.Conn) context.Context {
	cl, err := caller.OfConn(c)
	if err != nil {
		cl = caller.Caller{Unknown: true}
	}
	return caller.With(ctx, cl)
}

type operatorKey struct{}

type proofErrKey struct{}

// operatorOf is the operator whose key signed this request ("" if none).
func operatorOf(ctx context.Context) peer.ID {
	id, _ := ctx.Value(operatorKey{}).(peer.ID)
	return id
}

// guard runs before every route: a request that did not come through
// ConnContext is from an unknown caller, and an unprivileged caller's
// operator header is checked against the request's exact method, URI and body (read here, then given
// back to the route), so that rights can be decided from the context.
func (s *Server) guard(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ctx := r.Context()
		c, ok := caller.From(ctx)
		if !ok {
			c = caller.Caller{Unknown: true}
			ctx = caller.With(ctx, c)
		}
		// Root and the daemon's user need no key: theirs is not checked.
		if h := r.Header.Get(api.OperatorHeader); h != "" && !c.Privileged() {
			body, err := io.ReadAll(io.LimitReader(r.Body, maxBody+1))
			if err == nil && len(body) > maxBody {
				err = fmt.Errorf("larger than %d bytes", maxBody)
			}
			if err != nil {
				e := ErrorOf(api.BadRequestf("request body: %v", err))
				writeJSON(w, status(e), e)
				return
			}
			r.Body = io.NopCloser(bytes.NewReader(body))
			// A key that proves nothing gives no right; requests that need
			// none go on, and a refusal says why the key did not count.
			if s.cfg.Cluster == nil {
				ctx = context.WithValue(ctx, proofErrKey{}, errors.New("this daemon has no cluster file listing operators"))
			} else if id, err := s.cfg.Cluster.VerifyRequest(h, r.Method, r.URL.RequestURI(), body, time.Now()); err != nil {
				ctx = context.WithValue(ctx, proofErrKey{}, err)
			} else {
				ctx = context.WithValue(ctx, operatorKey{}, id)
			}
		}
		next.ServeHTTP(w, r.WithContext(ctx))
	})
}

// allow returns nil when the request's caller has every right named: root
// and the daemon's own user have them all; others by an operator key's
// signature of the request or by the cluster file's grants. Otherwise a
// forbidden error naming the first missing right and how to get it.
func (s *Server) allow(ctx context.Context, what string, rights ...api.Right) error {
	c, _ := caller.From(ctx)
	if c.Privileged() || operatorOf(ctx) != "" {
		return nil
	}
	user, groups := c.Names()
	for _, r := range rights {
		if s.cfg.Cluster != nil && !c.Unknown && s.cfg.Cluster.Granted(r, user, groups) {
			continue
		}
		who := "user:" + user
		if user == "" {
			who = "user:NAME"
		}
		err := fmt.Errorf("%s needs the right %q, which %s does not have: it is not root; present an operator key (P2PIMG_OPERATOR_KEY=FILE, or --key FILE where the command takes it), or have the cluster file grant it ([grants] %q = [%q])",
			what, r, c, who, r)
		if perr, ok := ctx.Value(proofErrKey{}).(error); ok {
			err = fmt.Errorf("%w; the operator key presented did not count: %w", err, perr)
		}
		return api.Forbidden(err)
	}
	return nil
}

// need wraps a route (what, as the command that calls it) that only
// callers with right may use.
func (s *Server) need(right api.Right, what string, h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if err := s.allow(r.Context(), what, right); err != nil {
			s.cfg.Log.Warn("request refused", "method", r.Method, "path", r.URL.Path, "err", err)
			e := ErrorOf(err)
			writeJSON(w, status(e), e)
			return
		}
		h(w, r)
	}
}
