package expose

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// Writers lists the processes that could still write into exposure e:
// those holding one of its files open for writing, or mapped shared and
// writable, one line each ("pid 812 (qemu-system-x86): /vm/disk.raw"),
// at most max. Taking an exposure down detaches what is still in use, and
// a process that writes into a detached overlay or disk image writes into
// what is about to be dropped; a deactivation that keeps changes asks
// first. A file counts when it lies on the exposure's own file systems
// (its overlay, its FUSE view: by device, so reached by any path, a bind
// elsewhere or from another mount namespace included) or under its path
// (a materialised view's files). The scan is of /proc, as fuser's; a
// process that opens a file after it is caught by the look for changes
// after the unmount.
func Writers(e *Exposure, max int) []string {
	dir := filepath.Clean(e.Path)
	devs := map[uint64]bool{}
	if e.Mode.Overlaid() {
		for _, p := range append([]string{e.Path}, e.Disks...) {
			var st unix.Stat_t
			if Mounted(p) && unix.Stat(p, &st) == nil {
				devs[st.Dev] = true
			}
		}
	}
	ours := func(path string, dev uint64, devKnown bool) bool {
		if devKnown && devs[dev] {
			return true
		}
		return path == dir || strings.HasPrefix(path, dir+"/")
	}
	procs, _ := os.ReadDir("/proc")
	var out []string
	for _, pe := range procs {
		pid, err := strconv.Atoi(pe.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		base := filepath.Join("/proc", pe.Name())
		if what := writing(base, ours); what != "" {
			out = append(out, fmt.Sprintf("pid %d (%s): %s", pid, comm(base), what))
		}
		if len(out) >= max {
			break
		}
	}
	return out
}

// writing is the first file of the exposure (ours) that process base (its
// /proc directory) holds open for writing or maps shared and writable.
func writing(base string, ours func(path string, dev uint64, devKnown bool) bool) string {
	fds, _ := os.ReadDir(filepath.Join(base, "fd"))
	for _, fd := range fds {
		link := filepath.Join(base, "fd", fd.Name())
		target, err := os.Readlink(link)
		if err != nil {
			continue
		}
		var st syscall.Stat_t
		known := syscall.Stat(link, &st) == nil // the open file itself, whatever its path
		if ours(target, st.Dev, known) && openForWriting(filepath.Join(base, "fdinfo", fd.Name())) {
			return target
		}
	}
	if p := sharedWritableMap(filepath.Join(base, "maps"), ours); p != "" {
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

// sharedWritableMap is the first file of the exposure (ours) that a maps
// file shows mapped shared and writable.
func sharedWritableMap(maps string, ours func(path string, dev uint64, devKnown bool) bool) string {
	f, err := os.Open(maps)
	if err != nil {
		return ""
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// address perms offset dev(major:minor, hex) inode path
		fields := strings.Fields(sc.Text())
		if len(fields) < 6 || len(fields[1]) < 4 || fields[1][1] != 'w' || fields[1][3] != 's' {
			continue
		}
		var dev uint64
		major, minor, ok := strings.Cut(fields[3], ":")
		maj, err1 := strconv.ParseUint(major, 16, 32)
		mnr, err2 := strconv.ParseUint(minor, 16, 32)
		known := ok && err1 == nil && err2 == nil
		if known {
			dev = unix.Mkdev(uint32(maj), uint32(mnr))
		}
		if p := strings.Join(fields[5:], " "); ours(p, dev, known) {
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
