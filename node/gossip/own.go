package gossip

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/p2pimg/p2pimg/chunk"
)

// maxDetail bounds the detail of a state record (a long error is cut).
const maxDetail = 1024

// nextVersion is the version of a record this host states now: its
// clock, and always above the last one.
func (s *Service) nextVersion() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.version = max(time.Now().UnixNano(), s.version+1)
	return s.version
}

// state brings the records this host states about itself (holdings,
// activation states, labels, policy and store figures) in line with what is true now:
// a record for what changed, a deletion for what went.
func (s *Service) state(ctx context.Context) error {
	holdings, err := s.holdings(ctx)
	if err != nil {
		return err
	}
	if err := s.stateKind(KindHolding, holdings); err != nil {
		return err
	}
	states := map[string][]byte{}
	for _, st := range s.cfg.States() {
		if len(st.Detail) > maxDetail {
			st.Detail = st.Detail[:maxDetail-3] + "..."
		}
		states[st.Layer], _ = json.Marshal(st)
	}
	if err := s.stateKind(KindState, states); err != nil {
		return err
	}
	info, _ := json.Marshal(hostInfo{Name: s.cfg.Name, Labels: s.cfg.Labels, Policy: s.cfg.HostPolicy(),
		Store: s.storeSummary(ctx, time.Now())})
	return s.stateKind(KindHost, map[string][]byte{"": info})
}

// holdings is the data of this host's holding records (manifest CID ->
// holding) as the store's layers say now. It lists the layers again only
// when the store's layer generation moved since the last time.
func (s *Service) holdings(ctx context.Context) (map[string][]byte, error) {
	gen := s.cfg.Store.LayerGen()
	s.mu.Lock()
	if s.held.ok && s.held.gen == gen {
		defer s.mu.Unlock()
		return s.held.want, nil
	}
	s.mu.Unlock()
	ls, err := s.cfg.Store.Layers(ctx)
	if err != nil {
		return nil, fmt.Errorf("own records: %w", err)
	}
	holdings := map[string][]byte{}
	for _, l := range ls {
		complete := l.State == chunk.Complete
		if prev, ok := holdings[l.CID]; ok && string(prev) == `{"complete":true}` {
			complete = true // two names of one manifest: complete if either is
		}
		holdings[l.CID], _ = json.Marshal(holding{Complete: complete})
	}
	s.mu.Lock()
	s.held.gen, s.held.ok, s.held.want = gen, true, holdings
	s.mu.Unlock()
	return holdings, nil
}

// stateKind makes this host's records of kind k say want (key -> data):
// changed and new keys get a new record, keys no longer wanted a deletion
// (a host record is never deleted).
func (s *Service) stateKind(k Kind, want map[string][]byte) error {
	c := s.cfg.Catalog
	for key, data := range want {
		if old, ok := c.stated(s.self, k, key); ok && bytes.Equal(old.Data, data) {
			continue
		}
		if err := s.say(k, key, data); err != nil {
			return err
		}
	}
	if k == KindHost {
		return nil
	}
	for _, key := range c.statedKeys(s.self, k) {
		if _, ok := want[key]; !ok {
			if err := s.say(k, key, nil); err != nil {
				return err
			}
		}
	}
	return nil
}

// say signs a record this host states and queues it for gossip.
func (s *Service) say(k Kind, key string, data []byte) error {
	r, err := signRecord(s.cfg.Key, Record{Kind: k, Key: key, Version: s.nextVersion(), Data: data})
	if err != nil {
		return fmt.Errorf("sign %s record: %w", k, err)
	}
	ck, err := CheckRecord(r, s.cfg.Cluster, time.Now())
	if err != nil {
		return fmt.Errorf("own %s record: %w", k, err)
	}
	return s.cfg.Catalog.local(ck)
}
