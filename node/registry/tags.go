package registry

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
)

// serveTags answers /v2/NAME/tags/list from the tags the cluster holds
// for the repository (imported, or pulled through a mirror from the
// upstream ns names): sorted, paginated with n and last, a Link header
// naming the next page. The upstream is not asked: a tag of the upstream
// that no host has pulled is not listed.
func (s *Service) serveTags(w http.ResponseWriter, r *http.Request, ns, repo string) (string, error) {
	q := r.URL.Query()
	n := -1
	if v := q.Get("n"); v != "" {
		k, err := strconv.Atoi(v)
		if err != nil || k < 0 {
			return srcNone, newErr(http.StatusBadRequest, "PAGINATION_NUMBER_INVALID", "n=%q: want a number of tags, 0 or more", v)
		}
		n = k
	}
	last := q.Get("last")
	prefix := refRepoPath(ns, repo) + ":"
	var tags []string
	for _, m := range s.cfg.Catalog.All() {
		if tag, ok := strings.CutPrefix(m.Name, prefix); ok && tagRE.MatchString(tag) {
			tags = append(tags, tag)
		}
	}
	if len(tags) == 0 {
		return srcNone, newErr(http.StatusNotFound, "NAME_UNKNOWN", "repository %s: the cluster holds no tag of it", repo)
	}
	slices.Sort(tags)
	tags = slices.Compact(tags)
	if last != "" {
		i, _ := slices.BinarySearch(tags, last)
		if i < len(tags) && tags[i] == last {
			i++
		}
		tags = tags[i:]
	}
	if n >= 0 && len(tags) > n {
		tags = tags[:n]
		if n > 0 {
			next := url.Values{"n": {strconv.Itoa(n)}, "last": {tags[n-1]}}
			if ns != "" {
				next.Set("ns", ns)
			}
			w.Header().Set("Link", fmt.Sprintf(`<%s?%s>; rel="next"`, r.URL.Path, next.Encode())) // the path as asked, registry prefix and all
		}
	}
	if tags == nil {
		tags = []string{}
	}
	body, _ := json.Marshal(struct {
		Name string   `json:"name"`
		Tags []string `json:"tags"`
	}{repo, tags})
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(http.StatusOK)
	if r.Method == http.MethodGet {
		w.Write(body)
	}
	return srcLocal, nil
}
