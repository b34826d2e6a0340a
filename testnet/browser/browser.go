// Package browser drives a headless Chromium (Debian's chromium package)
// from Go, for the web view's end-to-end test and the demo's screenshot.
// It starts a browser with a fresh profile that loads nothing by itself
// (no sync, no component updates, no background networking), so the only
// traffic is to the pages a caller opens.
package browser

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"

	"github.com/chromedp/chromedp"
)

// ErrNoBrowser is returned when no Chromium is installed.
var ErrNoBrowser = errors.New("no chromium found (install Debian's chromium package, or set P2PIMG_CHROMIUM)")

// Path is the Chromium binary: $P2PIMG_CHROMIUM, else the first of
// chromium, chromium-browser and google-chrome on PATH.
func Path() (string, error) {
	if p := os.Getenv("P2PIMG_CHROMIUM"); p != "" {
		return p, nil
	}
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p, nil
		}
	}
	return "", ErrNoBrowser
}

// Open starts a headless browser with its profile in the fresh directory
// profile and returns a context for chromedp actions on one tab. cancel
// closes the tab and the browser.
func Open(ctx context.Context, profile string) (context.Context, context.CancelFunc, error) {
	path, err := Path()
	if err != nil {
		return nil, nil, err
	}
	if err := os.MkdirAll(profile, 0o700); err != nil {
		return nil, nil, fmt.Errorf("browser profile: %w", err)
	}
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(path),
		chromedp.UserDataDir(profile),
		chromedp.Headless,
		chromedp.DisableGPU,
		chromedp.NoFirstRun,
		chromedp.NoDefaultBrowserCheck,
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.WindowSize(1280, 900),
	}
	if os.Geteuid() == 0 {
		opts = append(opts, chromedp.NoSandbox) // Chromium refuses to run as root with its sandbox
	}
	actx, cancelAlloc := chromedp.NewExecAllocator(ctx, opts...)
	tctx, cancelTab := chromedp.NewContext(actx)
	if err := chromedp.Do(tctx); err != nil { // starts the browser
		cancelTab()
		cancelAlloc()
		return nil, nil, fmt.Errorf("start %s: %w", path, err)
	}
	return tctx, func() { cancelTab(); cancelAlloc() }, nil
}

// Screenshot saves a PNG of the whole page at url once the JavaScript
// expression ready is true.
func Screenshot(ctx context.Context, url, ready, out string) error {
	if err := chromedp.Do(ctx, chromedp.Navigate(url)); err != nil {
		return fmt.Errorf("open %s: %w", url, err)
	}
	if _, err := chromedp.Run(ctx, chromedp.Poll[bool](ready)); err != nil {
		return fmt.Errorf("%s: waiting for %s: %w", url, ready, err)
	}
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		return fmt.Errorf("screenshot of %s: %w", url, err)
	}
	return os.WriteFile(out, png, 0o644)
}
