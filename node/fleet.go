package node

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/p2pimg/p2pimg/chunk/disk"
	"github.com/p2pimg/p2pimg/node/api"
	"github.com/p2pimg/p2pimg/node/gossip"
)

// seatsTimeout bounds asking a keeper for the seat table while building
// the fleet view: a partitioned host still shows the rest at once.
const seatsTimeout = 2 * time.Second

// Activations is every host's state for every layer, with the host's name
// and labels (times in UTC, as every document shows them).
func (n *Node) Activations() []api.HostActivation {
	out := n.act.Activations()
	hosts := n.hostInfo()
	for i := range out {
		out[i].LastSeen = out[i].LastSeen.UTC()
		if h, ok := hosts[out[i].Host]; ok {
			out[i].HostName, out[i].Labels = h.Name, h.Labels
		}
	}
	return out
}

// hostInfo is every known host (this one too) by peer id, with its
// liveness as this host knows it.
func (n *Node) hostInfo() map[string]api.FleetHost {
	now := time.Now()
	out := map[string]api.FleetHost{n.ID().String(): {ID: n.ID().String(), Name: n.cfg.Name,
		Labels: orEmpty(n.cfg.Labels), Reach: api.ReachSelf, LastSeen: now.UTC()}}
	for p, v := range n.catalog.Hosts() {
		h := api.FleetHost{ID: p.String(), Name: v.Name, Labels: orEmpty(v.Labels), Store: announcedUse(v.Store)}
		h.Reach, h.LastSeen = n.gossip.Reach(p, now)
		h.LastSeen = h.LastSeen.UTC()
		out[h.ID] = h
	}
	return out
}

// fleetCache keeps the last fleet document for fleetShare: every open
// web view asks for it every second, and one rebuild serves them all.
type fleetCache struct {
	mu sync.Mutex
	at time.Time
	f  *api.Fleet
	b  []byte // f encoded, once asked for
}

// fleetShare is how long a fleet document is served again: the event
// stream's default interval, so that however many pages are open the
// document is rebuilt at most once a second (at 1,000 hosts x 100 layers
// a rebuild takes about 0.2s of a core; BenchmarkFleetMatrix).
const fleetShare = time.Second

// Fleet is the cluster as this host sees it: hosts, the layers x hosts
// matrix, fetches under way, this host's peers and store, and seats. A
// document at most fleetShare old is shared; callers must not change it.
func (n *Node) Fleet(ctx context.Context) (*api.Fleet, error) {
	c := &n.fleet
	c.mu.Lock() // held while building: viewers asking at once wait for one build
	defer c.mu.Unlock()
	if c.f != nil && time.Since(c.at) < fleetShare {
		return c.f, nil
	}
	f, err := n.buildFleet(ctx)
	if err == nil {
		c.f, c.b, c.at = f, nil, time.Now()
	}
	return f, err
}

// FleetJSON is Fleet encoded in JSON, encoded once for every reader of
// the same document (an update at 1,000 hosts x 100 layers is 15 MB).
// Callers must not change it.
func (n *Node) FleetJSON(ctx context.Context) ([]byte, error) {
	f, err := n.Fleet(ctx)
	if err != nil {
		return nil, err
	}
	c := &n.fleet
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.f == f && c.b != nil {
		return c.b, nil
	}
	b, err := json.Marshal(f)
	if err == nil && c.f == f {
		c.b = b
	}
	return b, err
}

// buildFleet builds the fleet document now.
func (n *Node) buildFleet(ctx context.Context) (*api.Fleet, error) {
	now := time.Now()
	f := &api.Fleet{Schema: api.FleetSchema, Time: now.UTC(), Cluster: n.cfg.Cluster.Name, Self: n.ID().String(),
		Layers: []api.FleetLayer{}, Transfers: []api.Transfer{}}
	hosts := n.hostInfo()
	cat := n.Catalog(ctx) // read once: the store's layers and every holding
	f.Layers, f.Transfers = n.fleetLayers(ctx, cat, hosts, now)
	for _, l := range cat {
		for p, st := range l.Holders {
			if h, ok := hosts[p]; ok && st == "complete" {
				h.HeldLayers++
				h.HeldBytes += l.Size
				hosts[p] = h
			}
		}
	}
	self := hosts[f.Self]
	self.Store, _ = n.storeUse(ctx) // nil when unreadable: the page says so
	hosts[f.Self] = self
	f.Hosts = slices.SortedFunc(maps.Values(hosts), func(a, b api.FleetHost) int {
		return cmp.Or(cmp.Compare(a.Name, b.Name), strings.Compare(a.ID, b.ID))
	})
	f.Peers = n.fleetPeers(hosts, now)
	sctx, cancel := context.WithTimeout(ctx, seatsTimeout)
	defer cancel()
	if ls, err := n.seats.Licenses(sctx); err != nil {
		f.SeatsError = err.Error()
	} else {
		f.Seats = *ls
	}
	f.Seats.Licenses = nonNil(f.Seats.Licenses)
	f.Seats.Holders = nonNil(f.Seats.Holders)
	f.Seats.Held = nonNil(f.Seats.Held)
	return f, nil
}

// fleetLayers is the matrix and the fetches under way, from the
// activation states and policy conflicts as this host knows them now.
func (n *Node) fleetLayers(ctx context.Context, cat []api.ClusterLayer, hosts map[string]api.FleetHost, now time.Time) ([]api.FleetLayer, []api.Transfer) {
	live := map[string]bool{}
	rate := func(key string, done int64) int64 {
		live[key] = true
		return n.rates.observe(key, done, now, holdReported)
	}
	layers, transfers := fleetMatrix(cat, n.act.Activations(), n.policy.PolicyCheck(ctx), hosts, rate)
	n.rates.forget("fetch|", live)
	return layers, transfers
}

// fleetMatrix builds the matrix: one row per layer name (the newest
// version the catalogue knows, or only a host's state for it), one cell
// per host that holds it or reports a state for it; and the fetches under
// way, their rates from rate (keyed "fetch|HOST|LAYER"). Its cost is
// linear in the cells (plus sorting each row's): BenchmarkFleetMatrix.
func fleetMatrix(cat []api.ClusterLayer, acts []api.HostActivation, conflicts []api.PolicyResult, hosts map[string]api.FleetHost,
	rate func(key string, done int64) int64) ([]api.FleetLayer, []api.Transfer) {
	// Rows and their cells are values in slices, found through two maps:
	// no allocation per cell beyond its slot.
	type cellKey struct {
		row  int
		host string
	}
	var out []api.FleetLayer
	rows := map[string]int{}
	idx := make(map[cellKey]int, len(acts))
	row := func(name string) int {
		r, ok := rows[name]
		if !ok {
			r = len(out)
			rows[name] = r
			out = append(out, api.FleetLayer{Name: name, Cells: []api.FleetCell{}, Summary: api.Summary{}})
		}
		return r
	}
	// cell is valid until the next call (it points into the row's slice).
	cell := func(layer, host string) *api.FleetCell {
		r := row(layer)
		k := cellKey{r, host}
		i, ok := idx[k]
		if !ok {
			reach := hosts[host].Reach
			i = len(out[r].Cells)
			idx[k] = i
			out[r].Cells = append(out[r].Cells, api.FleetCell{Host: host, Stale: reach == api.ReachUnreachable || reach == api.ReachGone})
		}
		return &out[r].Cells[i]
	}
	for _, cl := range cat {
		r := &out[row(cl.Name)]
		r.CID, r.Size, r.Product, r.Published = cl.CID, cl.Size, cl.Product, cl.Published
	}
	transfers := []api.Transfer{}
	for _, a := range acts { // names and labels come from hosts
		if r := &out[row(a.Layer)]; r.CID == "" {
			r.CID = a.CID
		}
		c := cell(a.Layer, a.Host)
		c.State, c.Detail, c.At, c.Mode = a.State, a.Detail, a.At, a.Mode
		if a.State == api.StateFetching {
			c.Done, c.Total, c.Peers = a.Done, a.Total, a.Peers
			c.Rate = rate("fetch|"+a.Host+"|"+a.Layer, a.Done)
			transfers = append(transfers, api.Transfer{Host: a.Host, Layer: a.Layer, Done: a.Done, Total: a.Total, Rate: c.Rate, Peers: a.Peers})
		}
	}
	for _, pc := range conflicts {
		if pc.Conflict != nil {
			cell(pc.Layer, pc.Host).Conflict = pc.Conflict.Error()
		}
	}
	for _, cl := range cat {
		for p, st := range cl.Holders {
			cell(cl.Name, p).Holds = st
		}
	}
	for i := range out {
		r := &out[i]
		for _, c := range r.Cells {
			if c.State != "" {
				r.Summary[c.State]++
				r.Hosts++
				if c.Stale {
					r.Unreachable++
				}
			}
		}
		slices.SortFunc(r.Cells, func(a, b api.FleetCell) int { return strings.Compare(a.Host, b.Host) })
	}
	slices.SortFunc(out, func(a, b api.FleetLayer) int { return strings.Compare(a.Name, b.Name) })
	slices.SortFunc(transfers, func(a, b api.Transfer) int {
		return cmp.Or(strings.Compare(a.Layer, b.Layer), strings.Compare(a.Host, b.Host))
	})
	if out == nil {
		out = []api.FleetLayer{}
	}
	return out, transfers
}

// fleetPeers is this host's connections with their byte rates.
func (n *Node) fleetPeers(hosts map[string]api.FleetHost, now time.Time) []api.FleetPeer {
	out := []api.FleetPeer{}
	live := map[string]bool{}
	for _, p := range n.Peers() {
		in, outKey := "peer|in|"+p.PeerID, "peer|out|"+p.PeerID
		live[in], live[outKey] = true, true
		out = append(out, api.FleetPeer{Peer: p, Name: hosts[p.PeerID].Name,
			RateIn: n.rates.observe(in, p.BytesIn, now, holdLocal), RateOut: n.rates.observe(outKey, p.BytesOut, now, holdLocal)})
	}
	n.rates.forget("peer|", live)
	return out
}

// storeCache keeps the store's figures for storeFresh: counting them
// walks the whole chunk index, too much for every update of every open
// web view.
type storeCache struct {
	mu sync.Mutex
	at time.Time
	st *api.Stats
}

// storeFresh is how long the store's figures are reused.
const storeFresh = 10 * time.Second

// storeUse is this host's store figures (at most storeFresh old; At
// says when they were counted) and the disk under its data directory now.
func (n *Node) storeUse(ctx context.Context) (*api.StoreUse, error) {
	c := &n.use
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.st == nil || time.Since(c.at) > storeFresh {
		st, err := n.layers.Stats(ctx)
		if err != nil {
			return nil, err
		}
		c.st, c.at = st, time.Now()
	}
	u := &api.StoreUse{Stats: *c.st, At: c.at.UTC()}
	if d, err := disk.Space(n.cfg.DataDir); err == nil {
		u.DiskFree, u.DiskTotal = d.Free, d.Total
	}
	return u, nil
}

// storeSummary is this host's store figures as its host record carries
// them to the others.
func (n *Node) storeSummary(ctx context.Context) (gossip.StoreSummary, error) {
	u, err := n.storeUse(ctx)
	if err != nil {
		return gossip.StoreSummary{}, fmt.Errorf("store figures: %w", err)
	}
	return gossip.StoreSummary{At: u.At.UnixNano(), Layers: int64(u.Layers), Chunks: u.Chunks,
		LogicalBytes: u.LogicalBytes, StoredBytes: u.StoredBytes, AllocatedBytes: u.AllocatedBytes, DeadBytes: u.DeadBytes,
		ViewBytes: u.ViewBytes, DeltaBytes: u.DeltaBytes, UpperBytes: u.UpperBytes, DiskFree: u.DiskFree, DiskTotal: u.DiskTotal}, nil
}

// announcedUse is the store figures another host announced (nil: none).
func announcedUse(s *gossip.StoreSummary) *api.StoreUse {
	if s == nil {
		return nil
	}
	u := &api.StoreUse{At: time.Unix(0, s.At).UTC(), DiskFree: s.DiskFree, DiskTotal: s.DiskTotal,
		Stats: api.Stats{Layers: int(s.Layers), Chunks: s.Chunks, LogicalBytes: s.LogicalBytes, StoredBytes: s.StoredBytes,
			AllocatedBytes: s.AllocatedBytes, DeadBytes: s.DeadBytes, ViewBytes: s.ViewBytes, DeltaBytes: s.DeltaBytes, UpperBytes: s.UpperBytes}}
	if s.StoredBytes > 0 {
		u.DedupRatio = float64(s.LogicalBytes) / float64(s.StoredBytes)
	}
	return u
}

// nonNil is s, or an empty list for nil: JSON shows [] rather than null.
func nonNil[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}

func orEmpty(m map[string]string) map[string]string {
	if m == nil {
		return map[string]string{}
	}
	return m
}
