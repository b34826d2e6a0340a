package node

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"

	"github.com/p2pimg/p2pimg/chunk"
	"github.com/p2pimg/p2pimg/node/api"
	"github.com/p2pimg/p2pimg/node/p2p"
)

// Diff shows how a host's exposed view of a layer differs from the
// published manifest: this host's (host empty or this one's id), or
// another's, asked over diffProto.
func (n *Node) Diff(ctx context.Context, name, host string) (*api.DiffResult, error) {
	nm, err := chunk.ParseName(name)
	if err != nil {
		return nil, api.BadRequest(err)
	}
	if host != "" && host != n.ID().String() {
		return n.remoteDiff(ctx, nm.String(), host)
	}
	id, x, ok, err := n.act.Exposure(ctx, nm.String())
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, api.Conflictf("layer %s is not exposed on this host: nothing to compare (activate it, or check it out and compare yourself)", nm)
	}
	return n.policy.Diff(ctx, nm.String(), id, x)
}

// diffProto asks another host for its diff of a layer (`diff --host`):
// request a layer name (one line), answer one JSON object, a DiffResult
// or {"error": "..."}.
const diffProto = protocol.ID("/p2pimg/diff/1.0.0")

// serveDiff answers one diffProto stream; ctx is the node's.
func (n *Node) serveDiff(ctx context.Context, s network.Stream) {
	defer s.Close()
	s.SetDeadline(time.Now().Add(time.Minute))
	line, err := bufio.NewReader(io.LimitReader(s, 512)).ReadString('\n')
	if err != nil {
		s.Reset()
		return
	}
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	r, err := n.Diff(ctx, strings.TrimSpace(line), "")
	var out any = r
	if err != nil {
		out = map[string]string{"error": err.Error()}
	}
	json.NewEncoder(s).Encode(out)
}

func (n *Node) remoteDiff(ctx context.Context, name, host string) (*api.DiffResult, error) {
	id, err := peer.Decode(host)
	if err != nil {
		return nil, api.BadRequestf("--host %q: %v", host, err)
	}
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	s, err := n.net.Host.NewStream(ctx, id, diffProto)
	if err != nil {
		return nil, fmt.Errorf("diff on %s: %w", p2p.ShortID(id), err)
	}
	defer s.Close()
	if dl, ok := ctx.Deadline(); ok {
		s.SetDeadline(dl)
	}
	if _, err := io.WriteString(s, name+"\n"); err != nil {
		return nil, fmt.Errorf("diff on %s: %w", p2p.ShortID(id), err)
	}
	var resp struct {
		api.DiffResult
		Error string `json:"error"`
	}
	if err := json.NewDecoder(io.LimitReader(s, 16<<20)).Decode(&resp); err != nil {
		return nil, fmt.Errorf("diff on %s: %w", p2p.ShortID(id), err)
	}
	if resp.Error != "" {
		return nil, api.Conflictf("on %s: %s", p2p.ShortID(id), resp.Error)
	}
	return &resp.DiffResult, nil
}
