package spacer

// The harness of the end-to-end tests, after tests/src/lib.rs: start the
// real spacer-broker (which starts the real spacer-worker) from
// $SPACER_BIN_DIR on a socket in a 0755 temporary directory with a test
// policy, play unprivileged clients by running this test binary again as
// another uid (helper mode), and look at the real processes through /proc.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// The uids of tests/src/lib.rs: a stranger no rule names, and a tenant
// the test policy names.
const (
	stranger = 4242
	tenant   = 4343
)

// helperEnv selects helper mode: the test binary, run again as another
// uid, plays one client and prints its findings as JSON.
const helperEnv = "SPACER_GO_HELPER"

const testPolicy = `
[defaults]
allow = []

[[rule]]
name = "root"
uid = 0
allow = ["cgroup", "ipc", "mnt", "net", "time", "uts", "user", "pid"]
options = ["loopback", "hostname", "time-offsets"]

[[rule]]
name = "tenant"
uid = 4343
allow = ["net", "uts", "user", "pid"]
options = ["loopback", "hostname"]
`

func TestMain(m *testing.M) {
	if mode := os.Getenv(helperEnv); mode != "" {
		os.Exit(helperMain(mode))
	}
	// With a broker to test against, every test of the binary uses it,
	// the README's example (example_test.go) too.
	if bin := os.Getenv("SPACER_BIN_DIR"); bin != "" && os.Geteuid() == 0 {
		brokerOnce.Do(func() { theBroker, brokerErr = startBroker(bin) })
		if brokerErr != nil {
			fmt.Fprintln(os.Stderr, "starting the broker:", brokerErr)
			os.Exit(1)
		}
		os.Setenv(SocketEnv, theBroker.socket)
		os.Unsetenv(FdEnv)
	}
	code := m.Run()
	if theBroker != nil {
		if err := theBroker.stop(); err != nil {
			fmt.Fprintln(os.Stderr, "stopping the broker:", err)
			code = 1
		}
	}
	os.Exit(code)
}

// broker is a running spacer-broker.
type broker struct {
	dir    string // 0755, holds policy, socket, log and the helper binary
	socket string
	log    string
	helper string
	cmd    *exec.Cmd
	exited chan struct{}
	mu     sync.Mutex
	seen   map[int]bool // every process of the broker's tree ever seen
}

var (
	theBroker  *broker
	brokerErr  error
	brokerOnce sync.Once
)

// needBroker returns the one broker of this test run, started on first
// use; it skips the test when SPACER_BIN_DIR is not set (a run by hand:
// .ci/run sets it).
func needBroker(t *testing.T) *broker {
	t.Helper()
	bin := os.Getenv("SPACER_BIN_DIR")
	if bin == "" {
		t.Skip("SPACER_BIN_DIR is not set: build the workspace (cargo build --workspace) and set it to the target profile directory (e.g. target/debug) to run the end-to-end tests")
	}
	if os.Geteuid() != 0 {
		t.Fatal("the end-to-end tests need root (they start the broker and switch uids)")
	}
	brokerOnce.Do(func() { theBroker, brokerErr = startBroker(bin) })
	if brokerErr != nil {
		t.Fatal(brokerErr)
	}
	return theBroker
}

// locked runs f on a goroutine locked to its OS thread for f's whole run,
// then unlocks. Children started in f with Pdeathsig get their signal
// only when their parent thread ends, and this thread cannot end while f
// runs (nor be one that a test abandons after setns).
func locked(f func()) {
	done := make(chan struct{})
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		defer close(done)
		f()
	}()
	<-done
}

func startBroker(bin string) (*broker, error) {
	dir, err := os.MkdirTemp("", "spacer-go-test")
	if err != nil {
		return nil, err
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		return nil, err
	}
	b := &broker{
		dir:    dir,
		socket: filepath.Join(dir, "spacer.sock"),
		log:    filepath.Join(dir, "broker.log"),
		helper: filepath.Join(dir, "helper.test"),
		exited: make(chan struct{}),
		seen:   map[int]bool{},
	}
	// Root-owned, not writable by group or others: the broker refuses
	// anything else.
	policy := filepath.Join(dir, "policy.toml")
	if err := os.WriteFile(policy, []byte(testPolicy), 0o644); err != nil {
		return nil, err
	}
	if err := copyExecutable(b.helper); err != nil {
		return nil, err
	}
	logf, err := os.Create(b.log)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	b.cmd = exec.Command(filepath.Join(bin, "spacer-broker"),
		"--socket", b.socket, "--policy", policy, "--log-format", "json")
	b.cmd.Stderr = logf
	// The broker dies with this test process, however it ends. The
	// thread that starts it lives until the broker has exited (below).
	b.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	started := make(chan error)
	go func() {
		runtime.LockOSThread()
		err := b.cmd.Start()
		started <- err
		if err == nil {
			b.cmd.Wait()
			close(b.exited)
		}
		runtime.UnlockOSThread()
	}()
	if err := <-started; err != nil {
		return nil, err
	}
	end := time.Now().Add(10 * time.Second)
	for !b.hasEvent("start") {
		select {
		case <-b.exited:
			return nil, fmt.Errorf("the broker exited at start:\n%s", b.logText())
		default:
		}
		if time.Now().After(end) {
			b.stop()
			return nil, fmt.Errorf("the broker did not start within 10 s:\n%s", b.logText())
		}
		time.Sleep(10 * time.Millisecond)
	}
	b.tree()
	return b, nil
}

// copyExecutable copies this test binary to dst (0755) for other uids.
func copyExecutable(dst string) error {
	self, err := os.Executable()
	if err != nil {
		return err
	}
	in, err := os.Open(self)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o755)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

func (b *broker) logText() string {
	t, _ := os.ReadFile(b.log)
	return string(t)
}

// events are the JSON lines of the broker's log.
func (b *broker) events() []map[string]interface{} {
	var out []map[string]interface{}
	s := bufio.NewScanner(strings.NewReader(b.logText()))
	s.Buffer(nil, 1<<20)
	for s.Scan() {
		var e map[string]interface{}
		if json.Unmarshal(s.Bytes(), &e) == nil {
			out = append(out, e)
		}
	}
	return out
}

func (b *broker) hasEvent(name string) bool {
	for _, e := range b.events() {
		if e["event"] == name {
			return true
		}
	}
	return false
}

// decisions are the audit records of the log.
func (b *broker) decisions() []map[string]interface{} {
	var out []map[string]interface{}
	for _, e := range b.events() {
		if e["target"] == "spacer::audit" && e["message"] == "decision" {
			out = append(out, e)
		}
	}
	return out
}

// tree is the broker and every process below it (supervisor, workers,
// spawner, subspace workers), remembered for the orphan check.
func (b *broker) tree() []int {
	var out []int
	var walk func(int)
	walk = func(pid int) {
		out = append(out, pid)
		kids, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", pid, pid))
		for _, f := range strings.Fields(string(kids)) {
			if n, err := strconv.Atoi(f); err == nil {
				walk(n)
			}
		}
	}
	walk(b.cmd.Process.Pid)
	b.mu.Lock()
	for _, p := range out {
		b.seen[p] = true
	}
	b.mu.Unlock()
	sort.Ints(out)
	return out
}

// fdCounts maps each process of the broker's tree to its open fds.
func (b *broker) fdCounts() map[int]int {
	out := map[int]int{}
	for _, p := range b.tree() {
		if d, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", p)); err == nil {
			out[p] = len(d)
		}
	}
	return out
}

// settle waits until the broker's tree holds no more processes and no
// process more fds than base; it reports both if that does not happen
// within 5 s. (Subspace workers end, and the broker drops a closed
// connection's fds, a moment after the client closed them.)
func (b *broker) settle(t *testing.T, base map[int]int) {
	t.Helper()
	var now map[int]int
	end := time.Now().Add(5 * time.Second)
	for {
		now = b.fdCounts()
		ok := len(now) == len(base)
		for p, n := range now {
			if bn, known := base[p]; !known || n > bn {
				ok = false
			}
		}
		if ok {
			return
		}
		if time.Now().After(end) {
			t.Fatalf("the broker's processes did not go back to their fds: pid -> fds before %v, after %v", base, now)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// baseline is the broker's fd counts once it is warm: after a first
// rooms and subspace request, whose workers and caches are then there.
func (b *broker) baseline(t *testing.T) map[int]int {
	t.Helper()
	warmOnce.Do(func() {
		c, err := Connect(context.Background(), b.socket)
		if err != nil {
			t.Fatal(err)
		}
		r, err := c.Rooms(UTS)
		if err != nil {
			t.Fatal(err)
		}
		r.Close()
		inside, sub, err := c.Subspace(User)
		if err != nil {
			t.Fatal(err)
		}
		inside.Close()
		sub.Close()
		c.Close()
	})
	// Wait for what the warm-up left to go.
	var last map[int]int
	for i := 0; i < 100; i++ {
		now := b.fdCounts()
		if fmt.Sprint(now) == fmt.Sprint(last) {
			break
		}
		last = now
		time.Sleep(30 * time.Millisecond)
	}
	return last
}

var warmOnce sync.Once

// stop sends SIGTERM, waits up to 5 s (then SIGKILL), and checks that no
// process of the broker's tree outlived it.
func (b *broker) stop() error {
	b.tree()
	b.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-b.exited:
	case <-time.After(5 * time.Second):
		b.cmd.Process.Kill()
		<-b.exited
	}
	defer os.RemoveAll(b.dir)
	end := time.Now().Add(5 * time.Second)
	for {
		var alive []int
		b.mu.Lock()
		for p := range b.seen {
			if st, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p)); err == nil && !bytes.Contains(st, []byte(") Z ")) {
				alive = append(alive, p)
			}
		}
		b.mu.Unlock()
		if len(alive) == 0 {
			return nil
		}
		if time.Now().After(end) {
			for _, p := range alive {
				syscall.Kill(p, syscall.SIGKILL)
			}
			return fmt.Errorf("processes of the broker outlived it: %v", alive)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// helperResult is what a helper prints.
type helperResult struct {
	Checks []string // what it checked and found true
	Errors []string // what went wrong
}

// runHelper runs this test binary as uid/gid in helper mode, with env and
// extra files; it returns the helper's findings.
func (b *broker) runHelper(t *testing.T, mode string, uid uint32, env []string, extra ...*os.File) helperResult {
	t.Helper()
	var out, errb bytes.Buffer
	cmd := exec.Command(b.helper)
	cmd.Dir = b.dir
	cmd.Env = append([]string{helperEnv + "=" + mode, SocketEnv + "=" + b.socket, "PATH=" + os.Getenv("PATH")}, env...)
	cmd.Stdout, cmd.Stderr = &out, &errb
	cmd.ExtraFiles = extra
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if uid != 0 {
		cmd.SysProcAttr.Credential = &syscall.Credential{Uid: uid, Gid: uid, Groups: []uint32{}}
	}
	var err error
	locked(func() { err = cmd.Run() })
	if err != nil {
		t.Fatalf("helper %s as uid %d: %v\nstderr: %s\nstdout: %s", mode, uid, err, errb.String(), out.String())
	}
	var r helperResult
	if err := json.Unmarshal(out.Bytes(), &r); err != nil {
		t.Fatalf("helper %s output %q: %v (stderr %s)", mode, out.String(), err, errb.String())
	}
	for _, e := range r.Errors {
		t.Errorf("helper %s as uid %d: %s", mode, uid, e)
	}
	return r
}

// helperMain is the helper's main: it plays the client mode names and
// prints a helperResult.
func helperMain(mode string) int {
	h := &helper{}
	before := h.fds()
	func() {
		defer func() {
			if p := recover(); p != nil {
				h.fail("panic: %v", p)
			}
		}()
		switch mode {
		case "tenant":
			helperTenant(h)
		case "stranger":
			helperStranger(h)
		case "inherited":
			helperInherited(h)
		default:
			h.fail("unknown helper mode %q", mode)
		}
	}()
	if after := h.fds(); after != before {
		h.fail("open fds: %d before, %d after", before, after)
	} else {
		h.ok("no fd leaked (%d open)", after)
	}
	json.NewEncoder(os.Stdout).Encode(h.r)
	return 0
}

type helper struct{ r helperResult }

func (h *helper) ok(format string, args ...interface{}) {
	h.r.Checks = append(h.r.Checks, fmt.Sprintf(format, args...))
}

func (h *helper) fail(format string, args ...interface{}) {
	h.r.Errors = append(h.r.Errors, fmt.Sprintf(format, args...))
}

// check records cond as a check or an error.
func (h *helper) check(cond bool, format string, args ...interface{}) bool {
	if cond {
		h.ok(format, args...)
	} else {
		h.fail("not true: "+format, args...)
	}
	return cond
}

func (h *helper) fds() int {
	d, _ := os.ReadDir("/proc/self/fd")
	return len(d)
}

// connect is New as a client in a test would call it (from the
// environment: SPACER_FD, else SPACER_SOCKET).
func (h *helper) connect() *Client {
	c, err := New(context.Background())
	if err != nil {
		panic(err)
	}
	return c
}

// inode of a file (a namespace's inode, as readlink /proc/PID/ns/X shows).
func inode(f *os.File) uint64 {
	var st syscall.Stat_t
	if err := syscall.Fstat(int(f.Fd()), &st); err != nil {
		return 0
	}
	return st.Ino
}

// ownerOf is the inode of the user namespace owning the namespace of f
// (NS_GET_USERNS).
func ownerOf(f *os.File) uint64 {
	r, _, errno := syscall.Syscall(syscall.SYS_IOCTL, f.Fd(), 0xb701, 0)
	if errno != 0 {
		return 0
	}
	u := os.NewFile(r, "owner")
	defer u.Close()
	return inode(u)
}

// inNamespaces is Execute with the namespaces by type.
func inNamespaces(join map[Spaces]*os.File, f func() error) error {
	var files []*os.File
	for _, t := range []Spaces{Cgroup, IPC, Mnt, Net, UTS, PID} {
		if ns := join[t]; ns != nil {
			files = append(files, ns)
		}
	}
	return Execute(f, files...)
}

// threadNs is the inode of this thread's namespace of a type.
func threadNs(name string) uint64 {
	var st syscall.Stat_t
	if err := syscall.Stat("/proc/thread-self/ns/"+name, &st); err != nil {
		return 0
	}
	return st.Ino
}

// nsenter runs cmd (through nsenter(1), since a multi-threaded process
// cannot join a user or time namespace itself) in the namespaces given,
// as the user namespace's root; it returns the output.
func nsenter(join map[string]*os.File, cmd ...string) (string, error) {
	args := []string{}
	var files []*os.File
	for _, t := range []string{"user", "pid", "cgroup", "ipc", "mnt", "net", "time", "uts"} {
		if f := join[t]; f != nil {
			args = append(args, fmt.Sprintf("--%s=/proc/self/fd/%d", t, 3+len(files)))
			files = append(files, f)
		}
	}
	// Keeping its ids (--preserve-credentials), the child is root of the
	// user namespace all the same (the map takes the caller's uid to 0),
	// and nsenter does not call setgroups, which a one-id map denies.
	if join["user"] != nil {
		args = append(args, "--preserve-credentials")
	}
	c := exec.Command("nsenter", append(append(args, "--"), cmd...)...)
	c.ExtraFiles = files
	c.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	var out []byte
	var err error
	locked(func() { out, err = c.CombinedOutput() })
	if err != nil {
		return "", fmt.Errorf("%v: %v: %s", c.Args, err, out)
	}
	return strings.TrimSpace(string(out)), nil
}
