package localapi

import (
	"bufio"
	"compress/gzip"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// A gzipped event stream delivers each event when it is flushed, before
// the next is written; a client that does not accept gzip gets it plain.
func TestGzippedEvents(t *testing.T) {
	t.Parallel()
	next := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w, done := gzipped(w, r)
		defer done()
		for i := range 2 {
			fmt.Fprintf(w, "event: fleet\ndata: %d\n\n", i)
			w.(http.Flusher).Flush()
			<-next
		}
	}))
	defer srv.Close()
	defer close(next)
	for _, c := range []struct {
		accept, encoding string
	}{{"gzip, deflate, br", "gzip"}, {"deflate", ""}, {"gzip;q=0", ""}} {
		req, _ := http.NewRequest("GET", srv.URL, nil)
		req.Header.Set("Accept-Encoding", c.accept) // set by hand: Go's client then leaves the body as sent
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		if got := resp.Header.Get("Content-Encoding"); got != c.encoding {
			t.Fatalf("Accept-Encoding %q: Content-Encoding %q, want %q", c.accept, got, c.encoding)
		}
		body := bufio.NewReader(resp.Body)
		if c.encoding == "gzip" {
			zr, err := gzip.NewReader(resp.Body)
			if err != nil {
				t.Fatal(err)
			}
			body = bufio.NewReader(zr)
		}
		for i := range 2 {
			var ev strings.Builder
			for {
				line, err := body.ReadString('\n')
				if err != nil {
					t.Fatalf("Accept-Encoding %q: event %d: %v", c.accept, i, err)
				}
				if line == "\n" {
					break
				}
				ev.WriteString(line)
			}
			if want := fmt.Sprintf("event: fleet\ndata: %d\n", i); ev.String() != want {
				t.Fatalf("Accept-Encoding %q: event %q, want %q", c.accept, ev.String(), want)
			}
			next <- struct{}{} // the next event is written only now
		}
		resp.Body.Close()
	}
}
