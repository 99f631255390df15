package sandbox

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"mime/multipart"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/obdproject/obd/sandbox/sandboxapi"
)

// apiServer serves a new manager over HTTP without a token.
func apiServer(t *testing.T) (*Manager, *httptest.Server, *sandboxapi.Client, string) {
	m := newTestManager(t, nil)
	codeDir := filepath.Join(m.cfg.StateDir, "functions")
	srv := httptest.NewServer(NewHandler(m, codeDir, ""))
	t.Cleanup(srv.Close)
	return m, srv, &sandboxapi.Client{Base: srv.URL}, codeDir
}

func TestHTTPAPI(t *testing.T) {
	m, srv, c, codeDir := apiServer(t)
	ctx := context.Background()

	var code bytes.Buffer
	if err := sandboxapi.ArchiveDir(handlerDir(t), &code); err != nil {
		t.Fatal(err)
	}
	spec := sandboxapi.FunctionSpec{Name: "up", Image: "python3-bookworm", Entry: "main.handler", MemoryMB: 64, TimeoutMS: 500}
	if err := c.Register(ctx, spec, bytes.NewReader(code.Bytes())); err != nil {
		t.Fatal(err)
	}
	second := spec
	second.Name = "second"
	if err := c.Register(ctx, second, bytes.NewReader(code.Bytes())); err != nil {
		t.Fatal(err)
	}

	out, path, err := c.Run(ctx, "up", []byte(`{"op":"sqlite"}`))
	if err != nil || path != sandboxapi.Warm {
		t.Fatalf("run: %s %s %v", out, path, err)
	}
	var got map[string]int
	if err := json.Unmarshal(out, &got); err != nil || got["sum"] != 45 {
		t.Fatalf("run output %s", out)
	}
	if _, path, _ = c.Run(ctx, "up", []byte(`{"op":"echo"}`)); path != sandboxapi.Hot {
		t.Errorf("second run path %s, want hot", path)
	}
	if out, _, err := c.Run(ctx, "second", []byte(`{"op":"echo","value":"d"}`)); err != nil || !bytes.Contains(out, []byte(`"d"`)) {
		t.Errorf("second function: %s %v", out, err)
	}

	list, err := c.List(ctx)
	if err != nil || len(list) != 2 || list[0].Name != "second" || list[1].Name != "up" || list[1].TimeoutMS != 500 {
		t.Fatalf("list = %+v, %v", list, err)
	}
	st, err := c.Stats(ctx, "up")
	if err != nil || st.Invocations != 2 || st.Warm != 1 || st.Hot != 1 {
		t.Fatalf("stats = %+v, %v", st, err)
	}

	statusOf := func(err error) int {
		var ae *sandboxapi.APIError
		if errors.As(err, &ae) {
			return ae.Status
		}
		t.Fatalf("error %v is not an APIError", err)
		return 0
	}
	checks := []struct {
		what string
		err  error
		want int
	}{
		{"unknown function", func() error { _, _, err := c.Run(ctx, "nope", nil); return err }(), http.StatusNotFound},
		{"timeout", func() error { _, _, err := c.Run(ctx, "up", []byte(`{"op":"loop"}`)); return err }(), http.StatusGatewayTimeout},
		{"crash", func() error { _, _, err := c.Run(ctx, "up", []byte(`{"op":"crash"}`)); return err }(), http.StatusBadGateway},
		{"raise", func() error { _, _, err := c.Run(ctx, "up", []byte(`{"op":"nope"}`)); return err }(), http.StatusInternalServerError},
		{"bad event", func() error { _, _, err := c.Run(ctx, "up", []byte(`{not json`)); return err }(), http.StatusBadRequest},
		{"duplicate", c.Register(ctx, second, bytes.NewReader(code.Bytes())), http.StatusConflict},
		{"bad entry", c.Register(ctx, sandboxapi.FunctionSpec{Name: "x", Image: "python3-bookworm", Entry: "no dots"}, bytes.NewReader(code.Bytes())), http.StatusBadRequest},
		{"bad image", c.Register(ctx, sandboxapi.FunctionSpec{Name: "y", Image: "../etc", Entry: "m.f"}, bytes.NewReader(code.Bytes())), http.StatusBadRequest},
		{"host dir", postJSON(t, srv.URL, `{"name":"d","image":"python3-bookworm","entry":"main.handler","dir":"/etc"}`), http.StatusBadRequest},
		{"host dir with code", postMultipart(t, srv.URL, `{"name":"d","image":"python3-bookworm","entry":"main.handler","dir":"/etc"}`, code.Bytes()), http.StatusBadRequest},
		{"hostile code", c.Register(ctx, sandboxapi.FunctionSpec{Name: "z", Image: "python3-bookworm", Entry: "m.f"},
			bytes.NewReader(makeTar(t, entry{"../x", '0', "x"}))), http.StatusBadRequest},
	}
	for _, ch := range checks {
		if got := statusOf(ch.err); got != ch.want {
			t.Errorf("%s: HTTP %d, want %d (%v)", ch.what, got, ch.want, ch.err)
		}
	}

	// The same API on a unix socket.
	sock := filepath.Join(t.TempDir(), "lambda.sock")
	ul, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	usrv := &http.Server{Handler: NewHandler(m, codeDir, "")}
	go usrv.Serve(ul)
	defer usrv.Close()
	uc := &sandboxapi.Client{Base: "unix://" + sock}
	if out, path, err := uc.Run(ctx, "up", []byte(`{"op":"echo","value":"u"}`)); err != nil || path != sandboxapi.Hot || !bytes.Contains(out, []byte(`"u"`)) {
		t.Errorf("run over a unix socket: %s %s %v", out, path, err)
	}

	if err := c.Delete(ctx, "up"); err != nil {
		t.Fatal(err)
	}
	if err := c.Delete(ctx, "up"); statusOf(err) != http.StatusNotFound {
		t.Errorf("second delete: %v", err)
	}
	if list, _ := c.List(ctx); len(list) != 1 {
		t.Errorf("list after delete: %+v", list)
	}
	// Only the second function's code is left; failed registrations left none.
	if dirs, _ := filepath.Glob(filepath.Join(codeDir, "*")); len(dirs) != 1 || !strings.HasPrefix(filepath.Base(dirs[0]), "second-") {
		t.Errorf("code dirs left: %v", dirs)
	}
}

// postJSON posts a register request with a JSON body (no upload) and returns the error.
func postJSON(t *testing.T, base, spec string) error {
	resp, err := http.Post(base+"/functions", "application/json", strings.NewReader(spec))
	return responseErr(t, resp, err)
}

// postMultipart posts a register request with raw spec JSON and code.
func postMultipart(t *testing.T, base, spec string, code []byte) error {
	var body bytes.Buffer
	mw := multipart.NewWriter(&body)
	mw.WriteField(sandboxapi.FormSpec, spec)
	part, _ := mw.CreateFormFile(sandboxapi.FormCode, "code.tar")
	part.Write(code)
	mw.Close()
	resp, err := http.Post(base+"/functions", mw.FormDataContentType(), &body)
	return responseErr(t, resp, err)
}

func responseErr(t *testing.T, resp *http.Response, err error) error {
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode < 300 {
		return nil
	}
	return &sandboxapi.APIError{Status: resp.StatusCode}
}

// TestRegisterIsAtomic: registering a name that exists fails with 409 and leaves the live
// function's code and sandboxes as they were; a failed registration leaves no code behind.
func TestRegisterIsAtomic(t *testing.T) {
	_, _, c, codeDir := apiServer(t)
	ctx := context.Background()
	version := func(v string) []byte {
		return makeTar(t, entry{"main.py", '0', "def handler(event):\n    return {'version': '" + v + "'}\n"})
	}
	spec := sandboxapi.FunctionSpec{Name: "f", Image: "python3-bookworm", Entry: "main.handler"}
	if err := c.Register(ctx, spec, bytes.NewReader(version("1"))); err != nil {
		t.Fatal(err)
	}
	err := c.Register(ctx, spec, bytes.NewReader(version("2")))
	if ae := (*sandboxapi.APIError)(nil); !errors.As(err, &ae) || ae.Status != http.StatusConflict {
		t.Fatalf("registering f again: %v, want 409", err)
	}
	broken := spec
	broken.Name = "broken"
	if err := c.Register(ctx, broken, bytes.NewReader(makeTar(t, entry{"main.py", '0', "def handler(:\n"}))); err == nil {
		t.Fatal("registering code with a syntax error succeeded")
	}
	// Its sandboxes, spares prepared after the refused registration among them, run v1.
	for i := 0; i < 3; i++ {
		out, _, err := c.Run(ctx, "f", nil)
		if err != nil || !bytes.Contains(out, []byte(`"1"`)) {
			t.Fatalf("run %d after the refused re-registration: %s %v, want version 1", i, out, err)
		}
	}
	dirs, _ := filepath.Glob(filepath.Join(codeDir, "*"))
	if len(dirs) != 1 {
		t.Fatalf("code dirs %v, want f's only", dirs)
	}
	src, err := os.ReadFile(filepath.Join(dirs[0], "main.py"))
	if err != nil || !bytes.Contains(src, []byte("'1'")) {
		t.Errorf("f's code on disk after the refused re-registration: %q %v", src, err)
	}
}

func TestBearerToken(t *testing.T) {
	m := newTestManager(t, func(c *Config) { c.SpareRoots = -1 })
	srv := httptest.NewServer(NewHandler(m, filepath.Join(m.cfg.StateDir, "functions"), "s3cret"))
	defer srv.Close()
	ctx := context.Background()
	for _, token := range []string{"", "wrong", "s3cre", "s3cret2"} {
		c := &sandboxapi.Client{Base: srv.URL, Token: token}
		_, err := c.List(ctx)
		if ae := (*sandboxapi.APIError)(nil); !errors.As(err, &ae) || ae.Status != http.StatusUnauthorized {
			t.Errorf("token %q: %v, want 401", token, err)
		}
		err = c.Register(ctx, sandboxapi.FunctionSpec{Name: "f", Image: "python3-bookworm", Entry: "main.handler"},
			bytes.NewReader(makeTar(t, entry{"main.py", '0', "def handler(e):\n    return 1\n"})))
		if err == nil {
			t.Errorf("token %q: register succeeded", token)
		}
	}
	if len(m.Functions()) != 0 {
		t.Errorf("functions registered without the token: %v", m.Functions())
	}
	c := &sandboxapi.Client{Base: srv.URL, Token: "s3cret"}
	if _, err := c.List(ctx); err != nil {
		t.Errorf("with the token: %v", err)
	}
}
