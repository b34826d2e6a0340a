package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/p2pimg/p2pimg/node/api"
	"github.com/p2pimg/p2pimg/node/cluster"
	"github.com/p2pimg/p2pimg/node/gossip"
	"github.com/p2pimg/p2pimg/testnet"
	"github.com/p2pimg/p2pimg/testnet/refimage"
)

// benchActivation times activations on a 5-node testnet for a layer every
// host already has: from the request to the last host reported active (as
// the issuing host sees it, which is what --wait shows), and to the last
// host reporting anything at all (the gossip there and back).
func benchActivation(ctx context.Context, t *table, bin, dir string) error {
	fmt.Fprintln(os.Stderr, "activation latency on a 5-node testnet")
	tn := filepath.Join(dir, "act-testnet")
	l, err := testnet.Up(ctx, bin, tn, 5, testnet.UpOptions{})
	if err != nil {
		return err
	}
	defer l.Down(ctx, false)
	cls := l.Clients()
	img := filepath.Join(dir, "act.img")
	f, err := os.Create(img)
	if err != nil {
		return err
	}
	refimage.Write(f, 8<<20, 3)
	f.Close()
	if _, err := cls[0].Add(ctx, api.AddRequest{Name: "bench:act", Path: img}, nil); err != nil {
		return err
	}
	for _, cl := range cls[1:] {
		for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(20 * time.Millisecond) {
			if _, err := cl.Fetch(ctx, "bench:act", nil); err == nil {
				break
			} else if time.Now().After(deadline) {
				return err
			}
		}
	}
	key, err := cluster.LoadKeyFile(testnet.OperatorKey(tn))
	if err != nil {
		return err
	}
	id, err := cls[0].Resolve(ctx, "bench:act")
	if err != nil {
		return err
	}
	publish := func(op api.Op, at string) (int64, error) {
		a, err := gossip.SignActivation(key, gossip.Activation{Layer: "bench:act", CID: id, At: at, Hosts: "all", Op: op, Time: time.Now().UnixNano()})
		if err != nil {
			return 0, err
		}
		b, _ := json.Marshal(a)
		res, err := cls[0].Activate(ctx, api.ActivateRequest{Signed: b})
		return res.Time, err
	}
	// wait returns when every host reports a state for the activation at
	// time ts (seen), and when every host reports want.
	wait := func(ts int64, want api.State) (seen, done time.Duration, err error) {
		start := time.Now()
		for time.Since(start) < 30*time.Second {
			sts, err := cls[0].Activations(ctx)
			if err != nil {
				return 0, 0, err
			}
			any, ok := map[string]bool{}, map[string]bool{}
			for _, s := range sts {
				if s.Layer == "bench:act" && s.Time == ts {
					any[s.Host] = true
					ok[s.Host] = ok[s.Host] || s.State == want
				}
			}
			if len(any) == len(l.Nodes) && seen == 0 {
				seen = time.Since(start)
			}
			count := 0
			for _, v := range ok {
				if v {
					count++
				}
			}
			if count == len(l.Nodes) {
				return seen, time.Since(start), nil
			}
			time.Sleep(2 * time.Millisecond)
		}
		return 0, 0, fmt.Errorf("activation did not settle on every host in 30s")
	}
	var active, heard []float64
	for i := range samples.activations {
		ts, err := publish(api.OpActivate, fmt.Sprintf("/opt/bench%d", i))
		if err != nil {
			return err
		}
		s, d, err := wait(ts, api.StateActive)
		if err != nil {
			return err
		}
		active = append(active, d.Seconds()*1000)
		heard = append(heard, s.Seconds()*1000)
		ts, err = publish(api.OpDeactivate, "")
		if err != nil {
			return err
		}
		if _, _, err := wait(ts, api.StateInactive); err != nil {
			return err
		}
	}
	ma := median(active)
	t.add("activation, 5 hosts, layer present: command -> last host active", fmt.Sprintf("%.0f ms (median of %d)", ma, len(active)), "<= 300 ms", check(ma <= 300))
	t.add("  of which gossip: command -> every host has reported", fmt.Sprintf("%.0f ms", median(heard)), "", nil)
	return nil
}
