// Package seats is where licence seats are decided: the keepers' Raft
// group (hashicorp/raft over libp2p streams) that holds the seat table,
// the seat protocol every host uses to ask the keepers' leader, and this
// host's side of its grants (claims, releases, renewals, checks), and who
// the keepers are (keepers.go: changed while the cluster runs by an
// operator's signed request, through the leader's configuration changes).
// Gossip only announces that seats were freed and who the keepers are; it
// never carries the table and never decides who owns a seat: a seat is
// granted only by a command the keepers' majority committed.
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
	// Interval is how often the keepers' leader announces itself (and the
	// newest keeper change) without a change.
	Interval time.Duration
	Faults   *faults.Faults
}

// Service is this host's side of licence seats: the grants it holds (each
// valid until its own lease end, on this host's monotonic clock), the
// keepers it knows, where to send requests, and, on a keeper, its member
// of the Raft group.
type Service struct {
	cfg     Config
	faults  faults.Faults
	session string         // this run of the daemon: a restart is a new holder
	kick    *notify.Signal // the local keeper freed seats or installed a licence
	keeper  atomic.Pointer[keeper]
	// setChanged: the keepers changed or this host was asked to join them.
	setChanged *notify.Signal
	// announceChange: this host's keeper applied a keeper change; announce
	// it even when no longer the leader (it may have removed itself).
	announceChange atomic.Bool

	mu          sync.Mutex
	grants      map[uint64]*grant
	hint        peer.ID       // the keeper that answered last
	changed     chan struct{} // closed and replaced when seats were freed
	noted       uint64        // the index of the newest seat note heard
	journalFile *os.File      // faults.SeatJournal: every valid interval, for the checker
	change      *KeeperChange // the newest keeper change checked (nil: the cluster file's keepers)
	joining     *KeeperChange // the leader asked this host to join the keepers for this change
	running     chan struct{} // closed while this host's keeper runs (see setKeeper)

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

// New makes the seat service; it reads the newest keeper change this host
// knows and opens the seat journal when the faults ask for one, and starts
// nothing.
func New(cfg Config) (*Service, error) {
	b := make([]byte, 8)
	rand.Read(b)
	sv := &Service{cfg: cfg, faults: cfg.Faults.Get(), session: hex.EncodeToString(b), kick: notify.New(),
		setChanged: notify.New(), grants: map[uint64]*grant{}, changed: make(chan struct{}), running: make(chan struct{}),
		pending: map[string]seatReq{}, locks: map[string]*sync.RWMutex{}}
	if cfg.DataDir != "" {
		if err := sv.loadChange(); err != nil {
			return nil, err
		}
	}
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

// Run runs this host's keeper while it is one, the seat protocol, the seat
// notes on ps and the lease renewer, until ctx ends; then it shuts the
// keeper down. A cluster without keepers has no seats: Run returns at
// once. Cancellation is not an error.
func (sv *Service) Run(ctx context.Context, ps *pubsub.PubSub) error {
	if len(sv.keeperIDs()) == 0 {
		return nil
	}
	sv.cfg.Host.SetStreamHandler(seatProto, sv.handle)
	defer sv.cfg.Host.RemoveStreamHandler(seatProto)
	name := sv.topicName()
	if err := ps.RegisterTopicValidator(name, sv.validateNote); err != nil {
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
	g.Go(func() error { return sv.superviseKeeper(ctx) })
	g.Go(func() error { sv.receive(ctx, sub); return nil })
	g.Go(func() error { sv.announce(ctx, topic); return nil })
	g.Go(func() error { sv.renewer(ctx); return nil })
	return g.Wait()
}

// superviseKeeper runs this host's keeper while wantKeeper says so: it
// starts one when the host becomes a keeper (or is asked to join) and stops
// it when the host is removed, until ctx ends.
func (sv *Service) superviseKeeper(ctx context.Context) (err error) {
	var stop func() error
	first := true
	defer func() {
		if stop != nil {
			if cerr := stop(); cerr != nil {
				err = errors.Join(err, fmt.Errorf("keeper shutdown: %w", cerr))
			}
		}
	}()
	for {
		switch want := sv.wantKeeper(); {
		case want && stop == nil:
			k, err := sv.startKeeper(sv.bootstraps())
			if err != nil && first {
				return err // the daemon cannot keep seats as the cluster file says
			}
			if err != nil {
				sv.cfg.Log.Error("keeper did not start", "err", err)
				break
			}
			kctx, cancel := context.WithCancel(ctx)
			done := make(chan struct{})
			go func() { k.run(kctx); close(done) }()
			sv.setKeeper(k)
			stop = func() error { cancel(); <-done; sv.setKeeper(nil); return k.close() }
			sv.cfg.Log.Info("keeper started")
		case !want && stop != nil:
			if err := stop(); err != nil {
				sv.cfg.Log.Warn("keeper shutdown", "err", err)
			}
			stop = nil
			sv.cfg.Log.Info("keeper stopped: this host is no longer one of the keepers")
		}
		first = false
		select {
		case <-ctx.Done():
			return nil
		case <-sv.setChanged.C():
		}
	}
}

// setKeeper makes k this host's keeper (nil: none); a keeper set wakes
// whoever waits for one to run (keeperRunning).
func (sv *Service) setKeeper(k *keeper) {
	sv.mu.Lock()
	defer sv.mu.Unlock()
	sv.keeper.Store(k)
	select {
	case <-sv.running:
		if k == nil {
			sv.running = make(chan struct{})
		}
	default:
		if k != nil {
			close(sv.running)
		}
	}
}

// keeperRunning is closed while this host's keeper runs.
func (sv *Service) keeperRunning() <-chan struct{} {
	sv.mu.Lock()
	defer sv.mu.Unlock()
	return sv.running
}

func (sv *Service) topicName() string { return "p2pimg/" + sv.cfg.Cluster.Name + "/seats/1" }

func seatKey(product, consumer string) string { return product + "\x00" + consumer }
