package oci

import (
	"encoding/json"
	"strings"
	"testing"
)

func TestPickPlatform(t *testing.T) {
	t.Parallel()
	const man = "application/vnd.oci.image.manifest.v1+json"
	var ms []descriptor
	if err := json.Unmarshal([]byte(`[
		{"mediaType":"`+man+`","digest":"sha256:a","platform":{"os":"unknown","architecture":"unknown"}},
		{"mediaType":"`+man+`","digest":"sha256:b","platform":{"os":"linux","architecture":"arm64"}},
		{"mediaType":"application/vnd.oci.image.index.v1+json","digest":"sha256:c","platform":{"os":"linux","architecture":"amd64"}},
		{"mediaType":"`+man+`","digest":"sha256:d","platform":{"os":"linux","architecture":"amd64"}}]`), &ms); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ os, arch, want string }{
		{"linux", "amd64", "sha256:d"}, // a nested index is passed over
		{"linux", "arm64", "sha256:b"},
		{"linux", "riscv64", "sha256:b"}, // none for this machine: the first real platform, not the attestation
	} {
		got, err := pickPlatform(ms, c.os, c.arch)
		if err != nil || got.Digest != c.want {
			t.Errorf("%s/%s: %s %v, want %s", c.os, c.arch, got.Digest, err, c.want)
		}
	}
	if _, err := pickPlatform(ms[:1], "linux", "amd64"); err == nil || !strings.Contains(err.Error(), "none for a platform") {
		t.Errorf("only an attestation: %v", err)
	}
}
