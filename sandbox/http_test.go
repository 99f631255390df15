package sandbox

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"testing"

	"github.com/obdproject/obd/sandbox/sandboxapi"
)

func TestHTTPAPI(t *testing.T) {
	m := newTestManager(t, nil)
	codeDir := filepath.Join(m.cfg.StateDir, "functions")
	srv := httptest.NewServer(NewHandler(m, codeDir))
	defer srv.Close()
	c := &sandboxapi.Client{Base: srv.URL}
	ctx := context.Background()

	var code bytes.Buffer
	if err := sandboxapi.ArchiveDir(handlerDir(t), &code); err != nil {
		t.Fatal(err)
	}
	spec := sandboxapi.FunctionSpec{Name: "up", Image: "python3-bookworm", Entry: "main.handler", MemoryMB: 64, TimeoutMS: 500}
	if err := c.Register(ctx, spec, bytes.NewReader(code.Bytes())); err != nil {
		t.Fatal(err)
	}
	dirSpec := sandboxapi.FunctionSpec{Name: "ondisk", Image: "python3-bookworm", Entry: "main.handler", Dir: handlerDir(t)}
	if err := c.Register(ctx, dirSpec, nil); err != nil {
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
	if out, _, err := c.Run(ctx, "ondisk", []byte(`{"op":"echo","value":"d"}`)); err != nil || !bytes.Contains(out, []byte(`"d"`)) {
		t.Errorf("function with a server-side dir: %s %v", out, err)
	}

	list, err := c.List(ctx)
	if err != nil || len(list) != 2 || list[0].Name != "ondisk" || list[1].Name != "up" || list[1].TimeoutMS != 500 {
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
		{"duplicate", c.Register(ctx, dirSpec, nil), http.StatusConflict},
		{"bad entry", c.Register(ctx, sandboxapi.FunctionSpec{Name: "x", Image: "python3-bookworm", Entry: "no dots", Dir: "/"}, nil), http.StatusBadRequest},
		{"bad image", c.Register(ctx, sandboxapi.FunctionSpec{Name: "y", Image: "../etc", Entry: "m.f", Dir: "/"}, nil), http.StatusBadRequest},
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
	usrv := &http.Server{Handler: NewHandler(m, codeDir)}
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
}
