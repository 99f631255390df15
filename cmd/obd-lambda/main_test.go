package main

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/obdproject/obd/internal/testenv"
	"github.com/obdproject/obd/sandbox/sandboxapi"
)

const handler = `import json, sqlite3
def handler(event):
    return {"hello": event["who"], "sqlite": sqlite3.sqlite_version}
`

// TestServeAndCleanShutdown runs the real server binary, registers and invokes a function
// through the client, then sends SIGTERM and checks that no process, mount or cgroup of the
// server is left.
func TestServeAndCleanShutdown(t *testing.T) {
	bin, rootfsDir := buildServer(t)
	tmp := t.TempDir()
	stateDir := filepath.Join(tmp, "state")
	srv, c, logs := startServer(t, bin, rootfsDir, stateDir, nil)
	defer srv.Process.Kill()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	code := writeHandler(t)
	var tarball strings.Builder
	if err := sandboxapi.ArchiveDir(code, &tarball); err != nil {
		t.Fatal(err)
	}
	spec := sandboxapi.FunctionSpec{Name: "hello", Image: "python3-bookworm", Entry: "main.handler", Imports: []string{"decimal"}}
	if err := c.Register(ctx, spec, strings.NewReader(tarball.String())); err != nil {
		t.Fatal(err)
	}
	for i, want := range []sandboxapi.StartPath{sandboxapi.Warm, sandboxapi.Hot} {
		res, path, err := c.Run(ctx, "hello", []byte(fmt.Sprintf(`{"who":"w%d"}`, i)))
		if err != nil {
			t.Fatal(err)
		}
		if path != want || !strings.Contains(string(res), fmt.Sprintf(`"w%d"`, i)) {
			t.Fatalf("run %d: %s via %s, want path %s", i, res, path, want)
		}
	}
	testCLI(t, tmp, c.Base, code)

	// One sandbox waits frozen in the handler cache, the zygotes run: now stop the server.
	pid := srv.Process.Pid
	if n := processesOf(pid); n < 3 {
		t.Fatalf("%d processes of the server before shutdown, want zygote, function zygote and sandbox", n)
	}
	if err := srv.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			for line := range logs {
				t.Log(line)
			}
			t.Fatalf("server exit: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("server did not exit within 30s of SIGTERM")
	}
	if n := processesOf(pid); n != 0 {
		t.Errorf("%d sandbox processes left after SIGTERM", n)
	}
	mounts, _ := os.ReadFile("/proc/self/mountinfo")
	if strings.Contains(string(mounts), stateDir) {
		t.Errorf("mounts under %s left after SIGTERM", stateDir)
	}
	for _, ctrl := range []string{"memory", "cpu", "pids", "freezer", ""} {
		if left, _ := filepath.Glob(filepath.Join("/sys/fs/cgroup", ctrl, fmt.Sprintf("obd-sandbox-%d-*", pid))); len(left) > 0 {
			t.Errorf("cgroups left after SIGTERM: %v", left)
		}
	}
}

// processesOf counts the sandbox processes (zygotes, sandboxes) of the server with pid: their
// environment names its cgroup pool.
func processesOf(pid int) int {
	mark := fmt.Sprintf("\x00OBD_SANDBOX=obd-sandbox-%d-", pid)
	entries, _ := os.ReadDir("/proc")
	n := 0
	for _, e := range entries {
		if env, err := os.ReadFile(filepath.Join("/proc", e.Name(), "environ")); err == nil && strings.Contains("\x00"+string(env), mark) {
			n++
		}
	}
	return n
}

// testCLI drives `obd sandbox` against the server.
func testCLI(t *testing.T, tmp, server, code string) {
	t.Helper()
	obd := filepath.Join(tmp, "obd")
	if out, err := exec.Command("go", "build", "-o", obd, "../obd").CombinedOutput(); err != nil {
		t.Fatalf("build obd: %v\n%s", err, out)
	}
	run := func(args ...string) string {
		t.Helper()
		out, err := exec.Command(obd, append([]string{"sandbox", "--server", server}, args...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("obd sandbox %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	run("register", "cli", "--image", "python3-bookworm", "--code", code, "--memory", "64")
	if out := run("run", "--show-path", "cli", `{"who":"cli"}`); !strings.Contains(out, `"hello": "cli"`) || !strings.Contains(out, "start path: warm") {
		t.Errorf("obd sandbox run: %s", out)
	}
	if out := run("ls"); !strings.Contains(out, "cli") || !strings.Contains(out, "hello") || !strings.Contains(out, "64MB") {
		t.Errorf("obd sandbox ls: %s", out)
	}
	if out := run("stats", "cli"); !strings.Contains(out, `"invocations": 1`) {
		t.Errorf("obd sandbox stats: %s", out)
	}
	run("rm", "cli")
	out, err := exec.Command(obd, "sandbox", "--server", server, "run", "cli").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "404") {
		t.Errorf("run after rm: %v %s", err, out)
	}
}

// buildServer builds obd-lambda and the python rootfs; it skips without root.
func buildServer(t *testing.T) (bin, rootfsDir string) {
	t.Helper()
	rootfs := testenv.PythonRootfs(t)
	bin = filepath.Join(t.TempDir(), "obd-lambda")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	return bin, filepath.Dir(rootfs)
}

// startServer runs obd-lambda on a unix socket next to stateDir (or with the listen flags
// of extra, reached by c) and waits until it answers. base is the address for clients.
func startServer(t *testing.T, bin, rootfsDir, stateDir string, c *sandboxapi.Client, extra ...string) (*exec.Cmd, *sandboxapi.Client, chan string) {
	t.Helper()
	args := []string{"--state-dir", stateDir, "--keep-alive", "1m"}
	if rootfsDir != "" { // else extra names the image source (--bdd-socket)
		args = append(args, "--rootfs-dir", rootfsDir)
	}
	if c == nil {
		sock := filepath.Join(filepath.Dir(stateDir), "lambda.sock")
		args = append(args, "--listen", sock)
		c = &sandboxapi.Client{Base: "unix://" + sock}
	}
	srv := exec.Command(bin, append(args, extra...)...)
	stderr, _ := srv.StderrPipe()
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	logs := make(chan string, 1000)
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			select {
			case logs <- sc.Text():
			default:
			}
		}
		close(logs)
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for {
		_, err := c.List(ctx)
		if err == nil {
			return srv, c, logs
		}
		if ctx.Err() != nil {
			srv.Process.Kill()
			t.Fatalf("server never answered: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// freeAddr is a free TCP address on loopback.
func freeAddr(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// TestTCPNeedsToken: on TCP the server refuses to start without a token, and answers 401 to
// requests without it.
func TestTCPNeedsToken(t *testing.T) {
	bin, rootfsDir := buildServer(t)
	tmp := t.TempDir()
	addr := freeAddr(t)
	out, err := exec.Command(bin, "--listen", addr, "--state-dir", filepath.Join(tmp, "state"), "--rootfs-dir", rootfsDir).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "--token-file") {
		t.Fatalf("server on TCP without a token: %v %s, want a refusal naming --token-file", err, out)
	}
	tokenFile := filepath.Join(tmp, "token")
	const token = "0123456789abcdef-token"
	if err := os.WriteFile(tokenFile, []byte(token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	srv, c, _ := startServer(t, bin, rootfsDir, filepath.Join(tmp, "state"), &sandboxapi.Client{Base: "http://" + addr, Token: token},
		"--listen", addr, "--token-file", tokenFile)
	defer func() {
		srv.Process.Signal(syscall.SIGTERM)
		srv.Wait()
	}()
	var code strings.Builder
	if err := sandboxapi.ArchiveDir(writeHandler(t), &code); err != nil {
		t.Fatal(err)
	}
	spec := sandboxapi.FunctionSpec{Name: "f", Image: "python3-bookworm", Entry: "main.handler"}
	for _, bad := range []string{"", "0123456789abcdef-tokeN"} {
		noToken := &sandboxapi.Client{Base: c.Base, Token: bad}
		err := noToken.Register(context.Background(), spec, strings.NewReader(code.String()))
		if ae := (*sandboxapi.APIError)(nil); !errors.As(err, &ae) || ae.Status != http.StatusUnauthorized {
			t.Errorf("register with token %q: %v, want 401", bad, err)
		}
		if _, _, err := noToken.Run(context.Background(), "f", nil); err == nil {
			t.Errorf("run with token %q succeeded", bad)
		}
	}
	if err := c.Register(context.Background(), spec, strings.NewReader(code.String())); err != nil {
		t.Fatal(err)
	}
	if out, _, err := c.Run(context.Background(), "f", []byte(`{"who":"tcp"}`)); err != nil || !strings.Contains(string(out), "tcp") {
		t.Errorf("run with the token: %s %v", out, err)
	}
}

func writeHandler(t *testing.T) string {
	t.Helper()
	code := t.TempDir()
	os.Chmod(code, 0o755)
	if err := os.WriteFile(filepath.Join(code, "main.py"), []byte(handler), 0o644); err != nil {
		t.Fatal(err)
	}
	return code
}

// TestRestartAfterKill9: a server killed with SIGKILL while a sandbox sits frozen leaves
// mounts, cgroups and processes; the next server on the same state dir removes them.
func TestRestartAfterKill9(t *testing.T) {
	bin, rootfsDir := buildServer(t)
	stateDir := filepath.Join(t.TempDir(), "state")
	srv, c, _ := startServer(t, bin, rootfsDir, stateDir, nil)
	ctx := context.Background()
	var code strings.Builder
	if err := sandboxapi.ArchiveDir(writeHandler(t), &code); err != nil {
		t.Fatal(err)
	}
	if err := c.Register(ctx, sandboxapi.FunctionSpec{Name: "f", Image: "python3-bookworm", Entry: "main.handler"}, strings.NewReader(code.String())); err != nil {
		t.Fatal(err)
	}
	if _, _, err := c.Run(ctx, "f", []byte(`{"who":"x"}`)); err != nil {
		t.Fatal(err)
	}
	oldPid := srv.Process.Pid
	srv.Process.Kill()
	srv.Wait()

	srv2, _, _ := startServer(t, bin, rootfsDir, stateDir, nil)
	mounts, _ := os.ReadFile("/proc/self/mountinfo")
	if strings.Contains(string(mounts), filepath.Join(stateDir, "sandboxes")) {
		t.Errorf("the killed server's sandbox mounts survive the restart")
	}
	for _, ctrl := range []string{"memory", "cpu", "pids", "freezer", ""} {
		if left, _ := filepath.Glob(filepath.Join("/sys/fs/cgroup", ctrl, fmt.Sprintf("obd-sandbox-%d-*", oldPid))); len(left) > 0 {
			t.Errorf("the killed server's cgroups survive the restart: %v", left)
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for processesOf(oldPid) > 0 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if n := processesOf(oldPid); n > 0 {
		t.Errorf("%d processes of the killed server survive the restart", n)
	}
	srv2.Process.Signal(syscall.SIGTERM)
	if err := srv2.Wait(); err != nil {
		t.Errorf("second server exit: %v", err)
	}
}

// TestListensOnPrivateUnixSocket: a socket path gives a unix socket only root can use, and the
// client reaches the API through it.
func TestListensOnPrivateUnixSocket(t *testing.T) {
	bin, rootfsDir := buildServer(t)
	dir := t.TempDir()
	sock := filepath.Join(dir, "run", "lambda.sock")
	srv := exec.Command(bin, "--listen", sock, "--state-dir", filepath.Join(dir, "state"), "--rootfs-dir", rootfsDir)
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		srv.Process.Signal(syscall.SIGTERM)
		srv.Wait()
	}()
	c := &sandboxapi.Client{Base: "unix://" + sock}
	deadline := time.Now().Add(30 * time.Second)
	for {
		_, err := c.List(context.Background())
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("server never answered on %s: %v", sock, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	st, err := os.Stat(sock)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode()&os.ModeSocket == 0 || st.Mode().Perm() != 0o600 {
		t.Errorf("socket mode %v, want a 0600 socket", st.Mode())
	}
}

// TestTLS: with --tls-cert and --tls-key the API is HTTPS (the token still required).
func TestTLS(t *testing.T) {
	bin, rootfsDir := buildServer(t)
	tmp := t.TempDir()
	certFile, keyFile, pool := selfSigned(t, tmp)
	tokenFile := filepath.Join(tmp, "token")
	const token = "0123456789abcdef-token"
	if err := os.WriteFile(tokenFile, []byte(token), 0o600); err != nil {
		t.Fatal(err)
	}
	addr := freeAddr(t)
	c := &sandboxapi.Client{Base: "https://" + addr, Token: token,
		HTTP: &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}}
	srv, _, _ := startServer(t, bin, rootfsDir, filepath.Join(tmp, "state"), c,
		"--listen", addr, "--token-file", tokenFile, "--tls-cert", certFile, "--tls-key", keyFile)
	defer func() {
		srv.Process.Signal(syscall.SIGTERM)
		srv.Wait()
	}()
	plain := &sandboxapi.Client{Base: "http://" + addr, Token: token}
	if _, err := plain.List(context.Background()); err == nil {
		t.Error("plain HTTP to a TLS server succeeded")
	}
}

// selfSigned writes a certificate for 127.0.0.1 and its key into dir and returns their paths
// and a pool that trusts it.
func selfSigned(t *testing.T, dir string) (certFile, keyFile string, pool *x509.CertPool) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "obd-lambda test"},
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool = x509.NewCertPool()
	pool.AddCert(cert)
	return certFile, keyFile, pool
}

func TestPolicyFlags(t *testing.T) {
	for _, o := range []options{
		{policy: "nonesuch", timeScale: 1},
		{policy: "hybrid", timeScale: 0},
		{policy: "fixed--1m", timeScale: 1},
		{keepAlive: -time.Second, timeScale: 1},
		{policy: "hybrid", timeScale: 1, spares: -1},
	} {
		if _, err := newPolicies(o); err == nil {
			t.Errorf("policy %q, scale %v, keep-alive %v, spares %d: accepted", o.policy, o.timeScale, o.keepAlive, o.spares)
		}
	}
	ps, err := newPolicies(options{keepAlive: 90 * time.Second, timeScale: 1})
	if err != nil {
		t.Fatal(err)
	}
	def, err := ps("")
	if err != nil {
		t.Fatal(err)
	}
	if pw, ka := def.Decide("f", time.Now(), time.Now()); pw != 0 || ka != 90*time.Second {
		t.Errorf("default without --policy: pre-warm %v, keep-alive %v; want fixed --keep-alive 1m30s", pw, ka)
	}
	if p, err := ps("reuse+hybrid"); err != nil || !p.Lends() {
		t.Errorf("a function's reuse+hybrid: %v", err)
	}
	if _, err := ps("bogus"); err == nil {
		t.Error("a function's unknown policy accepted")
	}
}

// TestReusePolicyLends runs the server under --policy reuse+fixed-1m: a function with no idle
// sandbox borrows one of another whose imports cover it, and GET /stats counts the lend.
func TestReusePolicyLends(t *testing.T) {
	bin, rootfsDir := buildServer(t)
	stateDir := filepath.Join(t.TempDir(), "state")
	srv, c, _ := startServer(t, bin, rootfsDir, stateDir, nil, "--policy", "reuse+fixed-1m", "--spare-sandboxes", "0")
	defer func() {
		srv.Process.Signal(syscall.SIGTERM)
		srv.Wait()
	}()
	ctx := context.Background()
	var code strings.Builder
	if err := sandboxapi.ArchiveDir(writeHandler(t), &code); err != nil {
		t.Fatal(err)
	}
	for name, imports := range map[string][]string{"lender": {"json", "decimal"}, "borrower": {"decimal"}} {
		spec := sandboxapi.FunctionSpec{Name: name, Image: "python3-bookworm", Entry: "main.handler", Imports: imports}
		if err := c.Register(ctx, spec, strings.NewReader(code.String())); err != nil {
			t.Fatal(err)
		}
	}
	if _, path, err := c.Run(ctx, "lender", []byte(`{"who":"x"}`)); err != nil || path != sandboxapi.Warm {
		t.Fatalf("lender: %s, %v", path, err)
	}
	if _, path, err := c.Run(ctx, "borrower", []byte(`{"who":"x"}`)); err != nil || path != sandboxapi.Borrowed {
		t.Fatalf("borrower: %s, %v; want borrowed", path, err)
	}
	st, err := c.ServerStats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.Lends != 1 || st.ColdStartsSaved != 1 || st.Functions != 2 {
		t.Errorf("server stats %+v, want one lend saving one cold start", st)
	}
}
