package sandbox

import (
	_ "embed"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/obdproject/obd/internal/deathsig"
	"github.com/obdproject/obd/sandbox/cgroup"
	"golang.org/x/sys/unix"
)

//go:embed runner.py
var runnerSource string

// pythonPath is the runtime's interpreter inside an image.
const pythonPath = "/usr/bin/python3"

// sandboxFlags are the namespaces a sandbox is created in, besides its user namespace (a
// zygote's children clone the same ones in runner.py).
const sandboxFlags = unix.CLONE_NEWPID | unix.CLONE_NEWUTS | unix.CLONE_NEWIPC

// zygoteTimeout bounds one request to a zygote: one that takes longer counts as gone.
const zygoteTimeout = 10 * time.Second

// spec is what runner.py needs to become a sandbox.
type spec struct {
	Dir      string   `json:"dir"`
	Entry    string   `json:"entry"`
	Paths    []string `json:"paths,omitempty"`
	UID      int      `json:"uid"`
	Hostname string   `json:"hostname"`
	Cgroups  int      `json:"cgroups"`
	Imports  []string `json:"imports,omitempty"` // imported before the handler (checkpointed sandboxes)
}

// runnerArgv is python3 running runner.py with args.
func runnerArgv(args ...string) []string {
	return append([]string{pythonPath, "-I", "-c", runnerSource}, args...)
}

// socketPair returns two connected sockets of the given type as files.
func socketPair(typ int) (*os.File, *os.File, error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, typ|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("sandbox: socketpair: %w", err)
	}
	return os.NewFile(uintptr(fds[0]), "sandbox-server"), os.NewFile(uintptr(fds[1]), "sandbox-peer"), nil
}

// fileConn turns f into a net.Conn and closes f (the conn holds its own fd).
func fileConn(f *os.File) (net.Conn, error) {
	defer f.Close()
	c, err := net.FileConn(f)
	if err != nil {
		return nil, fmt.Errorf("sandbox: socket conn: %w", err)
	}
	return c, nil
}

// zygote is a python3 process that has imported a runtime's (and maybe a function's) modules
// and forks sandboxes on request. The runtime zygote is started by the server in its own PID,
// UTS and IPC namespaces in the image's root; a function zygote is forked from its parent
// zygote and imports more modules on top. Killing the runtime zygote (PID 1 of its namespace)
// kills everything forked from it.
type zygote struct {
	mu     sync.Mutex // one request at a time on ctl
	ctl    *net.UnixConn
	cmd    *exec.Cmd     // the runtime zygote only
	group  *cgroup.Group // the runtime zygote's, its function zygotes in it too
	pool   *cgroup.Pool
	parent *zygote
}

// startRuntimeZygote starts the runtime zygote of an image in root (a tree of the image),
// confined, in a cgroup of its own with Config.ZygoteLimits, importing m's Imports.
func (m *Manager) startRuntimeZygote(root *mountTree) (_ *zygote, err error) {
	_, _, forked, err := filters()
	if err != nil {
		return nil, err
	}
	group, err := m.pool.Get(m.cfg.ZygoteLimits)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			m.pool.Put(group)
		}
	}()
	procs, err := group.OpenProcs()
	if err != nil {
		return nil, err
	}
	defer closeFiles(procs)
	ours, theirs, err := socketPair(unix.SOCK_SEQPACKET)
	if err != nil {
		return nil, err
	}
	defer theirs.Close()
	mods, _ := json.Marshal(m.cfg.Imports)
	cmd, err := m.command(confined{root: root, files: []*os.File{theirs}, cgroups: procs, zygote: true, flags: sandboxFlags,
		stderr: m.stderr, argv: runnerArgv("zygote", string(mods), hex.EncodeToString(filterBytes(forked)))})
	if err != nil {
		ours.Close()
		return nil, err
	}
	if err := deathsig.Start(cmd); err != nil {
		ours.Close()
		return nil, fmt.Errorf("sandbox: start zygote: %w", err)
	}
	c, err := fileConn(ours)
	if err != nil {
		cmd.Process.Kill()
		cmd.Wait()
		return nil, err
	}
	return &zygote{ctl: c.(*net.UnixConn), cmd: cmd, group: group, pool: m.pool}, nil
}

func closeFiles(files []*os.File) {
	for _, f := range files {
		f.Close()
	}
}

// errZygoteGone is returned by requests to a zygote that no longer answers.
var errZygoteGone = errors.New("sandbox: zygote is gone")

// request sends one request with fds attached and waits for the zygote's reply.
func (z *zygote) request(req any, files ...*os.File) error {
	_, err := z.call(req, files...)
	return err
}

// call is request returning the pid of the reply (in the zygote's PID namespace).
func (z *zygote) call(req any, files ...*os.File) (int, error) {
	msg, err := json.Marshal(req)
	if err != nil {
		return 0, err
	}
	fds := make([]int, len(files))
	for i, f := range files {
		fds[i] = int(f.Fd())
	}
	z.mu.Lock()
	defer z.mu.Unlock()
	z.ctl.SetDeadline(time.Now().Add(zygoteTimeout))
	if _, _, err := z.ctl.WriteMsgUnix(msg, unix.UnixRights(fds...), nil); err != nil {
		return 0, fmt.Errorf("%w: request: %w", errZygoteGone, err)
	}
	buf := make([]byte, 1<<16)
	n, _, _, _, err := z.ctl.ReadMsgUnix(buf, nil)
	if err == nil && n == 0 {
		err = io.EOF
	}
	if err != nil {
		return 0, fmt.Errorf("%w: reply: %w", errZygoteGone, err)
	}
	var reply struct {
		PID   int    `json:"pid"`
		Error string `json:"error"`
	}
	if err := json.Unmarshal(buf[:n], &reply); err != nil {
		return 0, fmt.Errorf("sandbox: zygote reply %q: %w", buf[:n], err)
	}
	if reply.Error != "" {
		return 0, fmt.Errorf("sandbox: zygote: %s", reply.Error)
	}
	return reply.PID, nil
}

// child forks a function zygote that imports modules on top of z (the runtime zygote), in a
// network namespace of its own whose loopback the server brings up: the zygote holds no
// CAP_NET_ADMIN (with it, image code could reach nf_tables and traffic control).
func (z *zygote) child(imports []string) (_ *zygote, err error) {
	ours, theirs, err := socketPair(unix.SOCK_SEQPACKET)
	if err != nil {
		return nil, err
	}
	defer theirs.Close()
	nsPid, err := z.call(map[string]any{"op": "zygote", "imports": imports, "netns": true}, theirs)
	if err != nil {
		ours.Close()
		return nil, err
	}
	c, err := fileConn(ours)
	if err != nil {
		return nil, err
	}
	fz := &zygote{ctl: c.(*net.UnixConn), parent: z}
	defer func() {
		if err != nil {
			fz.close()
		}
	}()
	// Answering a ping, it has made its network namespace (and imported its modules).
	if err := fz.request(map[string]string{"op": "ping"}); err != nil {
		return nil, err
	}
	pid, err := childPid(z.cmd.Process.Pid, nsPid)
	if err != nil {
		return nil, err
	}
	if err := loopbackUpIn(pid); err != nil {
		return nil, fmt.Errorf("sandbox: function zygote's network: %w", err)
	}
	return fz, nil
}

// childPid finds the host pid of the child of process parent that is nsPid in parent's PID
// namespace: among the children of parent's threads (/proc/PID/task/TID/children), or, on a
// kernel without those files, among all processes.
func childPid(parent, nsPid int) (int, error) {
	var candidates []string
	lists, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/children", parent))
	for _, l := range lists {
		if b, err := os.ReadFile(l); err == nil {
			candidates = append(candidates, strings.Fields(string(b))...)
		}
	}
	if len(lists) == 0 {
		entries, _ := os.ReadDir("/proc")
		for _, e := range entries {
			candidates = append(candidates, e.Name())
		}
	}
	for _, c := range candidates {
		status, err := os.ReadFile("/proc/" + c + "/status")
		if err != nil {
			continue
		}
		var ppid, last string
		for _, line := range strings.Split(string(status), "\n") {
			if v, ok := strings.CutPrefix(line, "PPid:"); ok {
				ppid = strings.TrimSpace(v)
			}
			if v, ok := strings.CutPrefix(line, "NSpid:"); ok {
				if f := strings.Fields(v); len(f) > 0 {
					last = f[len(f)-1]
				}
			}
		}
		if ppid == strconv.Itoa(parent) && last == strconv.Itoa(nsPid) {
			return strconv.Atoi(c)
		}
	}
	return 0, fmt.Errorf("sandbox: zygote's child %d not found", nsPid)
}

// loopbackUpIn brings up the loopback of the network namespace of process pid, from an OS
// thread that joins it for that. A thread that cannot go back to the server's namespace stays
// locked, so the runtime retires it.
func loopbackUpIn(pid int) error {
	target, err := unix.Open(fmt.Sprintf("/proc/%d/ns/net", pid), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(target)
	runtime.LockOSThread()
	home, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		runtime.UnlockOSThread()
		return err
	}
	defer unix.Close(home)
	if err := unix.Setns(target, unix.CLONE_NEWNET); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("setns: %w", err)
	}
	upErr := loopbackUp()
	if err := unix.Setns(home, unix.CLONE_NEWNET); err != nil {
		return fmt.Errorf("back to the server's network namespace: %w", err)
	}
	runtime.UnlockOSThread()
	return upErr
}

// fork asks the zygote for a sandbox that chroots into root (a mount tree), joins the cgroups whose
// cgroup.procs files are procs, and serves requests on chan.
func (z *zygote) fork(s spec, root, chanFile *os.File, procs []*os.File) error {
	return z.request(map[string]any{"op": "fork", "spec": s}, append([]*os.File{root, chanFile}, procs...)...)
}

// close stops the zygote. A function zygote exits when its control socket closes; the runtime
// zygote is killed and reaped, which also ends every process forked from it.
func (z *zygote) close() error {
	z.ctl.Close()
	if z.cmd == nil {
		return nil
	}
	z.cmd.Process.Kill()
	z.cmd.Wait()
	return z.pool.Put(z.group)
}
