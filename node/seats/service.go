// Package seats is where licence seats are decided: the keepers' Raft
// group (hashicorp/raft over libp2p streams) that holds the seat table,
// the seat protocol every host uses to ask the keepers' leader, and this
// host's side of its grants (claims, releases, renewals, checks, and the
// table gossiped by the keepers). Gossip only announces the table; a seat
// is granted only by a command the keepers' majority committed.
package seats

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"

	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
	"golang.org/x/sync/errgroup"

	"github.com/p2pimg/p2pimg/license"
	"github.com/p2pimg/p2pimg/node/cluster"
	"github.com/p2pimg/p2pimg/node/faults"
	"github.com/p2pimg/p2pimg/node/notify"
)

// Config configures the seat service.
type Config struct {
	Host    host.Host
	Cluster *cluster.Config
	DataDir string // a keeper's Raft state lives in DataDir/raft
	Log     *slog.Logger
	// Interval is how often a keeper gossips its table without a change.
	Interval time.Duration
	Faults   *faults.Faults
}

// Service is this host's side of licence seats: the grants it holds (each
// valid until its own lease end, on this host's monotonic clock), the
// latest seat table it heard of, where to send requests, and, on a keeper,
// its member of the Raft group.
type Service struct {
	cfg     Config
	faults  faults.Faults
	session string         // this run of the daemon: a restart is a new holder
	kick    *notify.Signal // the local keeper applied a command
	keeper  atomic.Pointer[keeper]

	mu          sync.Mutex
	grants      map[uint64]*grant
	view        *license.Table // latest seat table gossiped by a keeper
	hint        peer.ID        // the keeper that answered last
	changed     chan struct{}  // closed and replaced when the view changes
	journalFile *os.File       // faults.SeatJournal: every valid interval, for the checker

	// A claim for a consumer waits for the keepers to confirm the
	// consumer's previous release: a release still in flight must not
	// free the seat a newer claim got back. pending holds the releases not
	// confirmed yet, by product and consumer (consumer "*": a whole seat,
	// released by token). locks orders the claims and releases of one
	// product on this host: a whole-seat release excludes them all, the
	// others exclude only their consumer's.
	pending map[string]seatReq
	keyMu   sync.Mutex
	locks   map[string]*sync.RWMutex
}

type grant struct {
	seat  license.Seat
	until time.Time // monotonic: this host treats the grant as valid until then
}

// New makes the seat service; it opens the seat journal when the faults
// ask for one, and starts nothing.
func New(cfg Config) (*Service, error) {
	b := make([]byte, 8)
	rand.Read(b)
	sv := &Service{cfg: cfg, faults: cfg.Faults.Get(), session: hex.EncodeToString(b), kick: notify.New(),
		grants: map[uint64]*grant{}, changed: make(chan struct{}),
		pending: map[string]seatReq{}, locks: map[string]*sync.RWMutex{}}
	if p := sv.faults.SeatJournal; p != "" {
		f, err := os.OpenFile(p, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
		if err != nil {
			return nil, fmt.Errorf("seat journal: %w", err)
		}
		sv.journalFile = f
	}
	return sv, nil
}

// Close closes the seat journal.
func (sv *Service) Close() error {
	if sv.journalFile != nil {
		return sv.journalFile.Close()
	}
	return nil
}

// Run starts this host's keeper (when it is one), the seat gossip on ps
// and the lease renewer, until ctx ends; then it shuts the keeper down.
// A cluster without keepers has no seats: Run returns at once.
// Cancellation is not an error.
func (sv *Service) Run(ctx context.Context, ps *pubsub.PubSub) (err error) {
	if len(sv.cfg.Cluster.KeeperIDs()) == 0 {
		return nil
	}
	if sv.cfg.Cluster.IsKeeper(sv.cfg.Host.ID()) {
		k, err := sv.startKeeper()
		if err != nil {
			return err
		}
		sv.keeper.Store(k)
		defer func() {
			if k := sv.keeper.Swap(nil); k != nil {
				if cerr := k.close(); cerr != nil {
					err = errors.Join(err, fmt.Errorf("keeper shutdown: %w", cerr))
				}
			}
		}()
	}
	name := sv.topicName()
	if err := ps.RegisterTopicValidator(name, sv.validateSeats); err != nil {
		return fmt.Errorf("seats: validator for %s: %w", name, err)
	}
	topic, err := ps.Join(name)
	if err != nil {
		return fmt.Errorf("seats: join %s: %w", name, err)
	}
	defer topic.Close()
	sub, err := topic.Subscribe()
	if err != nil {
		return fmt.Errorf("seats: subscribe to %s: %w", name, err)
	}
	defer sub.Cancel()
	g, ctx := errgroup.WithContext(ctx)
	if k := sv.keeper.Load(); k != nil {
		g.Go(func() error { k.run(ctx); return nil })
	}
	g.Go(func() error { sv.receive(ctx, sub); return nil })
	g.Go(func() error { sv.seatGossip(ctx, topic); return nil })
	g.Go(func() error { sv.renewer(ctx); return nil })
	return g.Wait()
}

func (sv *Service) topicName() string { return "p2pimg/" + sv.cfg.Cluster.Name + "/seats/1" }

func seatKey(product, consumer string) string { return product + "\x00" + consumer }
