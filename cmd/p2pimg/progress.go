package main

import (
	"fmt"
	"os"

	"github.com/schollz/progressbar/v3"
	"golang.org/x/term"

	"github.com/p2pimg/p2pimg/node/api"
	"github.com/p2pimg/p2pimg/node/client"
)

// events shows a long operation's progress as a bar when stderr is a
// terminal (and --json is off), and its warnings always.
func (a *app) events(what string) (client.Events, func()) {
	tty := !a.json
	if f, ok := a.stderr.(*os.File); !ok || !term.IsTerminal(int(f.Fd())) {
		tty = false
	}
	var bar *progressbar.ProgressBar
	on := func(ev api.Event) {
		if ev.Warning != "" {
			if bar != nil {
				bar.Clear()
			}
			fmt.Fprintln(a.stderr, "warning:", ev.Warning)
		}
		if p := ev.Progress; p != nil && tty {
			if bar == nil {
				bar = progressbar.NewOptions64(p.Total,
					progressbar.OptionSetWriter(a.stderr),
					progressbar.OptionSetDescription(what),
					progressbar.OptionShowBytes(p.Phase != "verify"),
					progressbar.OptionShowCount(),
					progressbar.OptionSetWidth(30),
					progressbar.OptionThrottle(100_000_000),
					progressbar.OptionClearOnFinish(),
				)
			}
			switch { // a fetch: from how many peers at the moment
			case p.Peers == 1:
				bar.Describe(what + " from 1 peer")
			case p.Peers > 1:
				bar.Describe(fmt.Sprintf("%s from %d peers", what, p.Peers))
			}
			bar.ChangeMax64(p.Total)
			bar.Set64(p.Done)
		}
	}
	done := func() {
		if bar != nil {
			bar.Finish()
		}
	}
	return on, done
}
