// Command webshot saves a screenshot of a p2pimg web view (the README's
// picture, taken by `make demo`) with headless Chromium.
//
//	go run ./testnet/webshot -url http://127.0.0.1:8080/ -o docs/fleet.png
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/p2pimg/p2pimg/testnet/browser"
)

func main() {
	url := flag.String("url", "", "the web view's URL")
	out := flag.String("o", "fleet.png", "PNG file to write")
	wait := flag.String("ready", `document.querySelector("#matrix tbody td.cell") !== null`, "JavaScript expression that is true once the page shows what to capture")
	timeout := flag.Duration("timeout", 60*time.Second, "give up after this long")
	flag.Parse()
	if *url == "" {
		fmt.Fprintln(os.Stderr, "webshot: -url is required")
		os.Exit(2)
	}
	if err := run(*url, *wait, *out, *timeout); err != nil {
		fmt.Fprintln(os.Stderr, "webshot:", err)
		if errors.Is(err, browser.ErrNoBrowser) {
			os.Exit(3)
		}
		os.Exit(1)
	}
}

func run(url, ready, out string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	profile, err := os.MkdirTemp("", "p2pimg-webshot-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(profile)
	bctx, closeBrowser, err := browser.Open(ctx, profile)
	if err != nil {
		return err
	}
	defer closeBrowser()
	if err := browser.Screenshot(bctx, url, ready, out); err != nil {
		return err
	}
	fmt.Println("saved", out)
	return nil
}
