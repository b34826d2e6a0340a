package seats

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/p2p/net/gostream"
	"github.com/p2pimg/p2pimg/license"
	"github.com/p2pimg/p2pimg/node/p2p"
)

// seatFSM is the seat table as a Raft state machine.
type seatFSM struct {
	rules   license.Rules
	mu      sync.Mutex
	tab     *license.Table
	changed func() // after every change
}

func (f *seatFSM) Apply(l *raft.Log) any {
	if l.Type != raft.LogCommand {
		return nil
	}
	c, err := license.UnmarshalCommand(l.Data)
	if err != nil {
		return license.Result{Code: license.CodeRefused, Err: err.Error()}
	}
	f.mu.Lock()
	r := f.tab.Apply(l.Index, c, f.rules)
	f.mu.Unlock()
	// Waiters claim again when a seat was freed or a licence installed;
	// anything else (a grant, a renewal, a refused claim) frees nothing,
	// and telling them would have them claim again at once, in a loop
	// through the log.
	if len(r.Freed) > 0 || (c.Op == license.OpInstall && r.Code == "") {
		f.changed()
	}
	return r
}

// StoreConfiguration records the index of each committed change of the
// keepers (raft.ConfigurationStore), so it travels in snapshots too.
func (f *seatFSM) StoreConfiguration(index uint64, _ raft.Configuration) {
	f.mu.Lock()
	f.tab.Conf = index
	f.mu.Unlock()
}

// expired reports whether a seat is due to be freed at now.
func (f *seatFSM) expired(now int64) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.tab.Expired(now, f.rules)
}

// conf is the index of the keepers' configuration in force.
func (f *seatFSM) conf() uint64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.tab.Conf
}

func (f *seatFSM) table() *license.Table {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.tab.Clone()
}

func (f *seatFSM) Snapshot() (raft.FSMSnapshot, error) {
	return tableSnap(license.MarshalTable(f.table())), nil
}

func (f *seatFSM) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	b, err := io.ReadAll(io.LimitReader(rc, 256<<20))
	if err != nil {
		return err
	}
	t, err := license.UnmarshalTable(b)
	if err != nil {
		return err
	}
	f.mu.Lock()
	f.tab = t
	f.mu.Unlock()
	f.changed()
	return nil
}

var _ raft.ConfigurationStore = (*seatFSM)(nil)

type tableSnap []byte

func (s tableSnap) Persist(sink raft.SnapshotSink) error {
	if _, err := sink.Write(s); err != nil {
		sink.Cancel()
		return err
	}
	return sink.Close()
}

func (tableSnap) Release() {}

// raftLayer is hashicorp/raft's stream layer over libp2p: server addresses
// are peer ids.
type raftLayer struct {
	net.Listener
	h host.Host
}

func (l raftLayer) Dial(addr raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	id, err := peer.Decode(string(addr))
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	return gostream.Dial(ctx, l.h, id, raftProto)
}

// keeper is this host's member of the keepers' Raft group.
type keeper struct {
	sv    *Service
	raft  *raft.Raft
	fsm   *seatFSM
	trans *raft.NetworkTransport
	store *raftboltdb.BoltStore
}

// slogWriter carries hashicorp/raft's log lines into the node's log.
type slogWriter struct{ log *slog.Logger }

func (w slogWriter) Write(b []byte) (int, error) {
	line := strings.TrimSpace(string(b))
	switch {
	case strings.Contains(line, "[ERROR]"), strings.Contains(line, "[WARN]"):
		w.log.Warn("raft", "msg", line)
	default:
		w.log.Debug("raft", "msg", line)
	}
	return len(b), nil
}

// startKeeper joins the keepers' Raft group; its state lives in
// DataDir/raft. With boot, a first start bootstraps the group with the
// keepers of the cluster file (the same on every such keeper, which Raft
// allows); without, a keeper with no state waits for the leader to send it
// the log or a snapshot.
func (sv *Service) startKeeper(boot bool) (*keeper, error) {
	dir := filepath.Join(sv.cfg.DataDir, "raft")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("keeper: %w", err)
	}
	store, err := raftboltdb.NewBoltStore(filepath.Join(dir, "raft.db"))
	if err != nil {
		return nil, fmt.Errorf("keeper: raft log %s: %w", dir, err)
	}
	logger := hclog.New(&hclog.LoggerOptions{Name: "raft", Level: hclog.Info, Output: slogWriter{sv.cfg.Log}})
	snaps, err := raft.NewFileSnapshotStoreWithLogger(dir, 2, logger)
	if err != nil {
		store.Close()
		return nil, fmt.Errorf("keeper: %w", err)
	}
	ln, err := gostream.Listen(sv.cfg.Host, raftProto)
	if err != nil {
		store.Close()
		return nil, err
	}
	k := &keeper{sv: sv, store: store}
	k.trans = raft.NewNetworkTransportWithLogger(raftLayer{ln, sv.cfg.Host}, 4, 5*time.Second, logger)
	k.fsm = &seatFSM{rules: sv.cfg.Cluster.SeatRules(), tab: &license.Table{}, changed: sv.kick.Notify}

	rc := raft.DefaultConfig()
	rc.LocalID = raft.ServerID(sv.cfg.Host.ID().String())
	rc.Logger = logger
	rc.SnapshotThreshold = 1024
	// CommitTimeout is how often an idle leader sends each follower an
	// AppendEntries (besides the heartbeats) so it learns the commit index:
	// at the default 50 ms that alone kept idle keepers above 1% of a core.
	// Claims are decided by the leader once a majority has the entry, so a
	// longer one does not slow them; followers' own tables (`license ls` on
	// a keeper) may lag by up to this much.
	rc.CommitTimeout = 500 * time.Millisecond
	rc.BatchApplyCh = true // concurrent claims share a log append and its fsync
	k.raft, err = raft.NewRaft(rc, k.fsm, store, store, snaps, k.trans)
	if err != nil {
		k.trans.Close()
		store.Close()
		return nil, fmt.Errorf("keeper: %w", err)
	}
	has, err := raft.HasExistingState(store, store, snaps)
	if err == nil && !has && boot {
		var cfg raft.Configuration
		for _, id := range sv.cfg.Cluster.KeeperIDs() {
			cfg.Servers = append(cfg.Servers, raft.Server{ID: raft.ServerID(id.String()), Address: raft.ServerAddress(id.String())})
		}
		err = k.raft.BootstrapCluster(cfg).Error()
	}
	if err != nil {
		k.close()
		return nil, fmt.Errorf("keeper: bootstrap: %w", err)
	}
	return k, nil
}

// now is the keeper's clock, the one it stamps commands with (shifted by
// faults.ClockOffset in the clock-skew tests).
func (k *keeper) now() int64 { return time.Now().Add(k.sv.faults.ClockOffset).UnixNano() }

func (k *keeper) close() error {
	err := k.raft.Shutdown().Error()
	return errors.Join(err, k.trans.Close(), k.store.Close())
}

// run frees expired seats (the leader proposes it) until ctx ends.
func (k *keeper) run(ctx context.Context) {
	t := time.NewTicker(250 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		now := k.now()
		if k.raft.State() == raft.Leader && k.fsm.expired(now) {
			k.propose(license.Command{Op: license.OpExpire, Now: now})
		}
	}
}

func (k *keeper) notLeader() seatResp {
	addr, _ := k.raft.LeaderWithID()
	return seatResp{NotLeader: true, Leader: string(addr), Change: k.sv.changeBytes()}
}

// serve answers one request from host from.
func (k *keeper) serve(from peer.ID, req seatReq) seatResp {
	switch req.Op {
	case opTable:
		// The leader's table: a follower learns of commits only with the
		// next AppendEntries, up to the commit timeout later.
		if k.raft.State() != raft.Leader {
			return k.notLeader()
		}
		b := license.MarshalTable(k.fsm.table())
		if len(b) > maxSeatResp-maxSeatMsg {
			return seatResp{Result: license.Result{Code: license.CodeRefused,
				Err: fmt.Sprintf("the seat table is %d bytes, more than one answer carries (%d)", len(b), maxSeatResp-maxSeatMsg)}}
		}
		return seatResp{Table: b}
	case opKeepers:
		// A follower learns of a committed change with the next
		// AppendEntries: its index may lag the leader's, and a change made
		// for a stale index is refused. Send the asker to the leader; with
		// no leader known, this keeper's own view is the best there is.
		if _, leader := k.raft.LeaderWithID(); k.raft.State() != raft.Leader && leader != "" {
			return k.notLeader()
		}
		return k.configuration()
	case opKeeperChange:
		return k.changeKeepers(req)
	case opCheck:
		if k.raft.State() != raft.Leader {
			return k.notLeader()
		}
		// A leader cut off from the others must not answer from its stale table.
		if err := k.raft.VerifyLeader().Error(); err != nil {
			return k.notLeader()
		}
		if len(req.Tokens) != 1 {
			return seatResp{Err: "check: want exactly one token"}
		}
		s, err := k.fsm.table().Current(req.Tokens[0], k.now())
		resp := seatResp{}
		if s.Token != 0 {
			resp.Seat = &s
		}
		if err != nil {
			resp.Result = license.Result{Code: license.CodeRefused, Err: err.Error()}
		}
		return resp
	case license.OpInstall, license.OpClaim, license.OpRenew, license.OpRelease:
	default:
		return seatResp{Err: fmt.Sprintf("unknown seat request %d", req.Op)}
	}
	if k.raft.State() != raft.Leader {
		return k.notLeader()
	}
	return k.propose(license.Command{
		Op: req.Op, Now: k.now(), Host: from.String(), Session: req.Session,
		Product: req.Product, Consumer: req.Consumer, Tokens: req.Tokens, License: req.License,
	})
}

func (k *keeper) propose(c license.Command) seatResp {
	f := k.raft.Apply(license.MarshalCommand(c), 5*time.Second)
	if err := f.Error(); err != nil {
		if errors.Is(err, raft.ErrNotLeader) || errors.Is(err, raft.ErrLeadershipLost) {
			return k.notLeader()
		}
		return seatResp{Err: fmt.Sprintf("keeper %s: %v", p2p.ShortID(k.sv.cfg.Host.ID()), err)}
	}
	r, _ := f.Response().(license.Result)
	return seatResp{Result: r}
}
