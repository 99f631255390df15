package sandbox

import (
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/obdproject/obd/sandbox/sandboxapi"
)

// functionOf is the Function a register request asks for.
func functionOf(s sandboxapi.FunctionSpec) Function {
	return Function{Name: s.Name, Image: s.Image, Entry: s.Entry, MemoryMB: s.MemoryMB, CPUs: s.CPUs, Pids: s.Pids,
		Timeout: time.Duration(s.TimeoutMS) * time.Millisecond, ScratchMB: s.ScratchMB, Imports: s.Imports, Packages: s.Packages,
		Policy: s.Policy, Checkpoint: s.Checkpoint}
}

// specOf is f on the wire.
func specOf(f Function) sandboxapi.FunctionSpec {
	return sandboxapi.FunctionSpec{Name: f.Name, Image: f.Image, Entry: f.Entry, MemoryMB: f.MemoryMB, CPUs: f.CPUs, Pids: f.Pids,
		TimeoutMS: f.Timeout.Milliseconds(), ScratchMB: f.ScratchMB, Imports: f.Imports, Packages: f.Packages,
		Policy: f.Policy, Checkpoint: f.Checkpoint}
}

const maxEventBytes = maxFrame - 64

// Handler serves Manager over the HTTP API of package sandboxapi. Uploaded code is unpacked
// with ExtractCode; a manager error maps to the status sandboxapi documents for it.
type Handler struct {
	m       *Manager
	codeDir string // uploaded handler code, one new dir per registration
	token   string // required bearer token; empty: none
	log     *slog.Logger
	mux     *http.ServeMux
}

// NewHandler serves m; uploaded code is unpacked under codeDir. With token not empty, every
// request must carry it as a bearer token (401 otherwise): a server reachable over TCP needs
// one.
func NewHandler(m *Manager, codeDir, token string) *Handler {
	h := &Handler{m: m, codeDir: codeDir, token: token, log: m.log, mux: http.NewServeMux()}
	h.mux.HandleFunc("POST /functions", h.register)
	h.mux.HandleFunc("GET /functions", h.list)
	h.mux.HandleFunc("GET /functions/{name}/stats", h.stats)
	h.mux.HandleFunc("GET /stats", h.serverStats)
	h.mux.HandleFunc("DELETE /functions/{name}", h.delete)
	h.mux.HandleFunc("POST /run/{name}", h.run)
	return h
}

// ServeHTTP implements http.Handler.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if h.token != "" {
		got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if !ok || subtle.ConstantTimeCompare([]byte(got), []byte(h.token)) != 1 {
			h.log.Warn("request without the bearer token", "method", r.Method, "path", r.URL.Path, "remote", r.RemoteAddr)
			w.Header().Set("WWW-Authenticate", "Bearer")
			writeJSON(w, http.StatusUnauthorized, sandboxapi.ErrorBody{Error: "a bearer token is required"})
			return
		}
	}
	h.mux.ServeHTTP(w, r)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

func (h *Handler) fail(w http.ResponseWriter, r *http.Request, err error) {
	status := http.StatusBadRequest
	switch {
	case errors.Is(err, ErrNotFound):
		status = http.StatusNotFound
	case errors.Is(err, ErrExists):
		status = http.StatusConflict
	case errors.Is(err, ErrTimeout):
		status = http.StatusGatewayTimeout
	case errors.Is(err, ErrCrashed), errors.Is(err, ErrFrame):
		status = http.StatusBadGateway
	case errors.Is(err, ErrHandler):
		status = http.StatusInternalServerError
	}
	h.log.Info("request failed", "method", r.Method, "path", r.URL.Path, "status", status, "err", err)
	writeJSON(w, status, sandboxapi.ErrorBody{Error: err.Error()})
}

// register unpacks the uploaded code into a new directory of its own and registers the
// function with it: a registration that fails, a name taken included, leaves every
// registered function's code as it was, and its own directory is removed.
func (h *Handler) register(w http.ResponseWriter, r *http.Request) {
	spec, dir, err := h.receive(r)
	if err == nil {
		f := functionOf(spec)
		f.Dir = dir
		err = h.m.Register(r.Context(), f)
	}
	if err != nil {
		if dir != "" {
			os.RemoveAll(dir)
		}
		h.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusCreated, spec)
}

// receive reads a register request: the spec, then the code, unpacked into a new directory
// under h.codeDir (returned also on error, for the caller to remove).
func (h *Handler) receive(r *http.Request) (spec sandboxapi.FunctionSpec, dir string, err error) {
	mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if mt != "multipart/form-data" {
		return spec, "", errors.New("register: want multipart/form-data with the spec and the code (code arrives only by upload)")
	}
	mr, err := r.MultipartReader()
	if err != nil {
		return spec, "", fmt.Errorf("register: %w", err)
	}
	for {
		part, err := mr.NextPart()
		if err == io.EOF {
			break
		}
		if err != nil {
			return spec, dir, fmt.Errorf("register: %w", err)
		}
		switch part.FormName() {
		case sandboxapi.FormSpec:
			dec := json.NewDecoder(io.LimitReader(part, 1<<20))
			dec.DisallowUnknownFields()
			err = dec.Decode(&spec)
		case sandboxapi.FormCode:
			// The spec part comes first, so the code dir can be named after the function.
			if !namePattern.MatchString(spec.Name) || dir != "" {
				err = errors.New("want the spec part, with a valid name, then one code part")
				break
			}
			if err = os.MkdirAll(h.codeDir, 0o700); err != nil {
				break
			}
			if dir, err = os.MkdirTemp(h.codeDir, spec.Name+"-"); err == nil {
				// Readable as the code inside: zygotes enter it before they become nobody.
				if err = os.Chmod(dir, 0o755); err == nil {
					err = ExtractCode(io.LimitReader(part, 2*maxCodeBytes), dir)
				}
			}
		}
		if err != nil {
			return spec, dir, fmt.Errorf("register: part %q: %w", part.FormName(), err)
		}
	}
	if dir == "" {
		return spec, "", errors.New("register: no code part (code arrives only by upload)")
	}
	return spec, dir, nil
}

func (h *Handler) list(w http.ResponseWriter, r *http.Request) {
	specs := []sandboxapi.FunctionSpec{}
	for _, f := range h.m.Functions() {
		specs = append(specs, specOf(f))
	}
	writeJSON(w, http.StatusOK, specs)
}

func (h *Handler) stats(w http.ResponseWriter, r *http.Request) {
	st, err := h.m.Stats(r.PathValue("name"))
	if err != nil {
		h.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, st)
}

func (h *Handler) serverStats(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, h.m.ServerStats())
}

func (h *Handler) delete(w http.ResponseWriter, r *http.Request) {
	f, err := h.m.Delete(r.PathValue("name"))
	if err != nil {
		h.fail(w, r, err)
		return
	}
	if filepath.Dir(f.Dir) == filepath.Clean(h.codeDir) {
		os.RemoveAll(f.Dir)
	}
	w.WriteHeader(http.StatusNoContent)
}

func (h *Handler) run(w http.ResponseWriter, r *http.Request) {
	event, err := io.ReadAll(io.LimitReader(r.Body, maxEventBytes+1))
	if err != nil {
		h.fail(w, r, fmt.Errorf("run: read event: %w", err))
		return
	}
	if len(event) > maxEventBytes {
		h.fail(w, r, fmt.Errorf("run: event over %d bytes", maxEventBytes))
		return
	}
	if len(event) > 0 && !json.Valid(event) {
		h.fail(w, r, errors.New("run: event is not JSON"))
		return
	}
	res, err := h.m.Invoke(r.Context(), r.PathValue("name"), event)
	if res.Path != "" {
		w.Header().Set(sandboxapi.HeaderStartPath, string(res.Path))
		w.Header().Set(sandboxapi.HeaderStartTime, strconv.FormatInt(res.Start.Microseconds(), 10))
	}
	if err != nil {
		h.fail(w, r, err)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Write(res.Output)
}
