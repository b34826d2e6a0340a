package expose

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Writers lists the processes that could still write under dir: those
// holding a file there open for writing, or mapped shared and writable,
// one line each ("pid 812 (qemu-system-x86): /vm/disk.raw"), at most max.
// Taking an exposure down detaches what is still in use, and a process
// that writes into a detached overlay or disk image writes into what is
// about to be dropped; a deactivation that keeps changes asks first.
// Processes in other mount namespaces see other paths and are not
// matched. The scan is of /proc, as fuser's; a process that opens a file
// after it is caught by the look for changes after the unmount.
func Writers(dir string, max int) []string {
	dir = filepath.Clean(dir)
	within := func(p string) bool { return p == dir || strings.HasPrefix(p, dir+"/") }
	procs, _ := os.ReadDir("/proc")
	var out []string
	for _, pe := range procs {
		pid, err := strconv.Atoi(pe.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		base := filepath.Join("/proc", pe.Name())
		if what := writing(base, within); what != "" {
			out = append(out, fmt.Sprintf("pid %d (%s): %s", pid, comm(base), what))
		}
		if len(out) >= max {
			break
		}
	}
	return out
}

// writing is the first file within dir that process base (its /proc
// directory) holds open for writing or maps shared and writable.
func writing(base string, within func(string) bool) string {
	fds, _ := os.ReadDir(filepath.Join(base, "fd"))
	for _, fd := range fds {
		target, err := os.Readlink(filepath.Join(base, "fd", fd.Name()))
		if err == nil && within(target) && openForWriting(filepath.Join(base, "fdinfo", fd.Name())) {
			return target
		}
	}
	if p := sharedWritableMap(filepath.Join(base, "maps"), within); p != "" {
		return p + " (mapped)"
	}
	return ""
}

// openForWriting reads an fdinfo file's flags.
func openForWriting(fdinfo string) bool {
	b, err := os.ReadFile(fdinfo)
	if err != nil {
		return false
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "flags:"); ok {
			f, err := strconv.ParseUint(strings.TrimSpace(v), 8, 64)
			return err == nil && f&unix.O_ACCMODE != unix.O_RDONLY
		}
	}
	return false
}

// sharedWritableMap is the first file within dir that a maps file shows
// mapped shared and writable.
func sharedWritableMap(maps string, within func(string) bool) string {
	f, err := os.Open(maps)
	if err != nil {
		return ""
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// address perms offset dev inode path
		fields := strings.Fields(sc.Text())
		if len(fields) < 6 || len(fields[1]) < 4 || fields[1][1] != 'w' || fields[1][3] != 's' {
			continue
		}
		if p := strings.Join(fields[5:], " "); within(p) {
			return p
		}
	}
	return ""
}

// comm is a process's command name.
func comm(base string) string {
	b, _ := os.ReadFile(filepath.Join(base, "comm"))
	return strings.TrimSpace(string(b))
}
