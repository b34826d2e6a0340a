package main

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/p2pimg/p2pimg/node/cluster"
	"github.com/p2pimg/p2pimg/testnet"
)

// localUser is a user made for one test, in the socket's group.
type localUser struct {
	name     string
	uid, gid int
}

// userTest skips t unless it runs as root with setpriv, marks it
// parallel, and adds a group (prefix and a random tag) removed at cleanup.
func userTest(t *testing.T, prefix string) (group, tag string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: it makes test users and a group and runs the daemon as root")
	}
	if _, err := exec.LookPath("setpriv"); err != nil {
		t.Skip("needs setpriv (util-linux)")
	}
	t.Parallel()
	tag = strconv.Itoa(rand.IntN(1e6))
	group = prefix + tag
	if out, err := exec.Command("groupadd", group).CombinedOutput(); err != nil {
		t.Skipf("groupadd: %v %s", err, out)
	}
	t.Cleanup(func() { exec.Command("groupdel", group).Run() })
	return group, tag
}

// makeUser adds a user (no home, no shell) in group, removed at cleanup.
func makeUser(t *testing.T, name, group string) localUser {
	t.Helper()
	if out, err := exec.Command("useradd", "-M", "-N", "-g", group, "-s", "/usr/sbin/nologin", name).CombinedOutput(); err != nil {
		t.Fatalf("useradd %s: %v %s", name, err, out)
	}
	t.Cleanup(func() { exec.Command("userdel", name).Run() })
	u, err := user.Lookup(name)
	if err != nil {
		t.Fatal(err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	return localUser{name, uid, gid}
}

// cliAs runs the binary as u (setpriv: real and effective ids, u's groups).
func cliAs(t *testing.T, u localUser, bin string, d *testnet.Daemon, env []string, args ...string) (string, string, int) {
	t.Helper()
	cmd := exec.Command("setpriv", append([]string{"--reuid", u.name, "--regid", strconv.Itoa(u.gid), "--init-groups", "--", bin}, args...)...)
	cmd.Env = append(append(os.Environ(), "P2PIMG_SOCKET="+d.Client.Socket()), env...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return out.String(), errb.String(), ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return out.String(), errb.String(), 0
}

// A user in the socket group is not root: it adds only what it can read,
// checks out only where it can write (files its own), and needs a right
// (an operator key or a grant) for activations, maps, policies, licences
// and gc; activations stay inside allowed_paths and off other users'
// paths. Root still can do each.
func TestUnprivilegedCaller(t *testing.T) {
	group, tag := userTest(t, "p2pg")
	u := makeUser(t, "p2pu"+tag, group) // no rights
	v := makeUser(t, "p2pv"+tag, group) // granted activate (not map) by the cluster file

	base, err := os.MkdirTemp("", "p2pimg-access-") // t.TempDir's parents are 0700: the users could not reach it
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(base) })
	mk := func(p string, mode os.FileMode, owner int) string {
		p = filepath.Join(base, p)
		if err := os.MkdirAll(p, mode); err != nil {
			t.Fatal(err)
		}
		os.Chmod(p, mode)
		os.Chown(p, owner, owner)
		return p
	}
	os.Chmod(base, 0o755)
	ubin := filepath.Join(mk("bin", 0o755, 0), "p2pimg")
	if b, err := os.ReadFile(bin); err != nil || os.WriteFile(ubin, b, 0o755) != nil {
		t.Fatalf("copy the binary: %v", err)
	}
	secret := mk("secret", 0o700, 0)
	os.WriteFile(filepath.Join(secret, "key"), []byte("root's key"), 0o600)
	udir := mk("udir", 0o755, u.uid)
	os.WriteFile(filepath.Join(udir, "README"), []byte("mine"), 0o644)
	os.Chown(filepath.Join(udir, "README"), u.uid, u.gid)
	// an attribute, read and set again with the caller's rights
	xattrs := syscall.Setxattr(filepath.Join(udir, "README"), "user.p2pimg.test", []byte("v"), 0) == nil
	uout := mk("uout", 0o755, u.uid)
	root := mk("root", 0o755, 0)
	mk("root/rootonly", 0o700, 0)
	mk("root/srv", 0o755, 0)
	mk("root/home/u", 0o755, u.uid)
	mk("root/etc", 0o755, 0)
	os.WriteFile(filepath.Join(root, "etc/passwd"), []byte("root:x:0:0::/root:/bin/sh\n"), 0o644)
	hostPolicy := filepath.Join(base, "host.toml")
	os.WriteFile(hostPolicy, []byte("deny = [\"test-*\"]\n"), 0o644)
	os.WriteFile(filepath.Join(base, "x.lic"), []byte("not even a licence"), 0o644)

	opKey := filepath.Join(base, "op.key")
	opID, err := cluster.NewKeyFile(opKey)
	if err != nil {
		t.Fatal(err)
	}
	os.Chown(opKey, u.uid, u.gid)                // u may present it in one step below
	strayKey := filepath.Join(base, "stray.key") // a key no cluster lists
	if _, err := cluster.NewKeyFile(strayKey); err != nil {
		t.Fatal(err)
	}
	os.Chown(strayKey, u.uid, u.gid)
	cc, err := cluster.New("access", nil, []string{opID.String()})
	if err != nil {
		t.Fatal(err)
	}
	cc.PSK = ""
	cc.Grants = map[string][]string{"user:" + v.name: {"activate"}}
	cf := filepath.Join(base, "cluster.toml")
	if err := cc.Write(cf); err != nil {
		t.Fatal(err)
	}
	data := mk("data", 0o711, 0) // the socket's directory: reachable, not listable
	d := startDaemon(t, data, "--socket-group", group, "--cluster", cf, "--root", root, "--expose", "materialized",
		"--allowed-paths", "/srv", "--allowed-paths", "/rootonly", "--allowed-paths", "/home", "--allowed-paths", "/etc")

	refused := func(who localUser, want string, env []string, args ...string) {
		t.Helper()
		_, errOut, code := cliAs(t, who, ubin, d, env, args...)
		t.Logf("as %s: p2pimg %s: %s", who.name, args[0], strings.TrimSpace(errOut))
		if code == 0 || !strings.Contains(errOut, want) {
			t.Errorf("as %s: p2pimg %s: exit %d, %q; want a refusal naming %q", who.name, strings.Join(args, " "), code, errOut, want)
		}
	}
	allowed := func(who localUser, env []string, args ...string) string {
		t.Helper()
		out, errOut, code := cliAs(t, who, ubin, d, env, args...)
		if code != 0 {
			t.Errorf("as %s: p2pimg %s: exit %d: %s", who.name, strings.Join(args, " "), code, errOut)
		}
		return out
	}

	// add: only what the caller can read.
	refused(u, "permission denied", nil, "add", "loot:1", filepath.Join(secret, "key"))
	mustCLI(t, d, "add", "loot:1", filepath.Join(secret, "key"))
	allowed(u, nil, "add", "mine:1", udir)

	// checkout: only where the caller can write, files its own.
	refused(u, "permission denied", nil, "checkout", "mine:1", filepath.Join(secret, "out"))
	allowed(u, nil, "checkout", "mine:1", filepath.Join(uout, "co"))
	if fi, err := os.Stat(filepath.Join(uout, "co", "README")); err != nil || fi.Sys().(*syscall.Stat_t).Uid != uint32(u.uid) {
		t.Errorf("checked-out file as %s: %v %v, want owned by uid %d", u.name, fi, err, u.uid)
	}
	if buf := make([]byte, 8); xattrs {
		if n, err := syscall.Getxattr(filepath.Join(uout, "co", "README"), "user.p2pimg.test", buf); err != nil || string(buf[:n]) != "v" {
			t.Errorf("checked out as %s: user.p2pimg.test %q, %v; want \"v\"", u.name, buf[:max(n, 0)], err)
		}
	}
	mustCLI(t, d, "checkout", "mine:1", filepath.Join(secret, "out"))

	// activation, --map, policy, licences, gc: rights.
	refused(u, `right "activate"`, nil, "activate", "mine:1", "--at", "/rootonly", "--hosts", "self", "--wait")
	mustCLI(t, d, "activate", "mine:1", "--at", "/rootonly", "--hosts", "self", "--wait", "--timeout", "30s")
	refused(u, `right "activate"`, nil, "activate", "mine:1", "--at", "/srv/app", "--hosts", "self", "--map", "/etc/passwd=README")
	refused(v, `right "map"`, nil, "activate", "mine:1", "--at", "/srv/app", "--hosts", "self", "--map", "/etc/passwd=README")
	refused(u, `right "activate"`, nil, "deactivate", "mine:1", "--hosts", "self")
	refused(u, `right "gc"`, nil, "gc")
	refused(u, `right "policy"`, nil, "policy", "set-host", hostPolicy)
	refused(u, `right "license"`, nil, "license", "install", filepath.Join(base, "x.lic"))
	mustCLI(t, d, "gc")
	mustCLI(t, d, "policy", "set-host", hostPolicy)
	// An operator key presented by the caller gives the rights; a key the
	// cluster does not list gives none, and says so.
	allowed(u, []string{"P2PIMG_OPERATOR_KEY=" + opKey}, "gc")
	refused(u, "not listed under operators", []string{"P2PIMG_OPERATOR_KEY=" + strayKey}, "gc")
	allowed(u, []string{"P2PIMG_OPERATOR_KEY=" + strayKey}, "layers")

	// A granted user's activation never touches another user's path; it
	// may place a layer where root owns the path.
	refused(v, "belongs to uid "+strconv.Itoa(u.uid), nil, "activate", "mine:1", "--at", "/home/u/app", "--hosts", "self")
	allowed(v, nil, "activate", "loot:1", "--at", "/srv/vapp", "--hosts", "self", "--wait", "--timeout", "30s")

	// allowed_paths confine even root's activations; inside them root maps /etc/passwd.
	if _, errOut, code := cli(t, d, "activate", "mine:1", "--at", "/opt/x", "--hosts", "self"); code == 0 || !strings.Contains(errOut, "outside this host's allowed paths") {
		t.Errorf("root activation outside allowed_paths: exit %d, %s", code, errOut)
	}
	if _, errOut, code := cli(t, d, "activate", "mine:1", "--at", "/srv/app", "--hosts", "self", "--map", "/opt/conf=README"); code == 0 || !strings.Contains(errOut, "/opt/conf is outside") {
		t.Errorf("root map outside allowed_paths: exit %d, %s", code, errOut)
	}
	mustCLI(t, d, "deactivate", "mine:1", "--hosts", "self", "--wait", "--timeout", "30s")
	mustCLI(t, d, "activate", "mine:1", "--at", "/srv/app", "--hosts", "self", "--map", "/etc/passwd=README", "--wait", "--timeout", "30s")
	if b, err := os.ReadFile(filepath.Join(root, "etc/passwd")); err != nil || string(b) != "mine" {
		t.Errorf("root's map of /etc/passwd: %q %v", b, err)
	}
}
