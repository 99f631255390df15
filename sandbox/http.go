package sandbox

import (
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
	"time"

	"github.com/obdproject/obd/sandbox/sandboxapi"
)

// functionOf is the Function a register request asks for.
func functionOf(s sandboxapi.FunctionSpec) Function {
	return Function{Name: s.Name, Image: s.Image, Entry: s.Entry, Dir: s.Dir, MemoryMB: s.MemoryMB, CPUs: s.CPUs,
		Pids: s.Pids, Timeout: time.Duration(s.TimeoutMS) * time.Millisecond, Imports: s.Imports, Packages: s.Packages}
}

// specOf is f on the wire.
func specOf(f Function) sandboxapi.FunctionSpec {
	return sandboxapi.FunctionSpec{Name: f.Name, Image: f.Image, Entry: f.Entry, Dir: f.Dir, MemoryMB: f.MemoryMB, CPUs: f.CPUs,
		Pids: f.Pids, TimeoutMS: f.Timeout.Milliseconds(), Imports: f.Imports, Packages: f.Packages}
}

const maxEventBytes = maxFrame - 64

// Handler serves Manager over the HTTP API of package sandboxapi. Uploaded code is unpacked
// with ExtractCode; a manager error maps to the status sandboxapi documents for it.
type Handler struct {
	m       *Manager
	codeDir string // uploaded handler code, one dir per function
	log     *slog.Logger
	mux     *http.ServeMux
}

// NewHandler serves m; uploaded code is unpacked under codeDir.
func NewHandler(m *Manager, codeDir string) *Handler {
	h := &Handler{m: m, codeDir: codeDir, log: m.log, mux: http.NewServeMux()}
	h.mux.HandleFunc("POST /functions", h.register)
	h.mux.HandleFunc("GET /functions", h.list)
	h.mux.HandleFunc("GET /functions/{name}/stats", h.stats)
	h.mux.HandleFunc("DELETE /functions/{name}", h.delete)
	h.mux.HandleFunc("POST /run/{name}", h.run)
	return h
}

// ServeHTTP implements http.Handler.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) { h.mux.ServeHTTP(w, r) }

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

func (h *Handler) register(w http.ResponseWriter, r *http.Request) {
	var spec sandboxapi.FunctionSpec
	var uploaded string
	mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if mt == "multipart/form-data" {
		mr, err := r.MultipartReader()
		if err != nil {
			h.fail(w, r, fmt.Errorf("register: %w", err))
			return
		}
		for {
			part, err := mr.NextPart()
			if err == io.EOF {
				break
			}
			if err != nil {
				h.fail(w, r, fmt.Errorf("register: %w", err))
				return
			}
			switch part.FormName() {
			case sandboxapi.FormSpec:
				err = json.NewDecoder(io.LimitReader(part, 1<<20)).Decode(&spec)
			case sandboxapi.FormCode:
				// The spec part comes first, so the code dir can be named after the function.
				if !namePattern.MatchString(spec.Name) {
					err = fmt.Errorf("the spec part, with a valid name, must come before the code part")
					break
				}
				uploaded = filepath.Join(h.codeDir, spec.Name)
				os.RemoveAll(uploaded)
				if err = os.MkdirAll(uploaded, 0o755); err == nil {
					err = ExtractCode(io.LimitReader(part, 2*maxCodeBytes), uploaded)
				}
			}
			if err != nil {
				os.RemoveAll(uploaded)
				h.fail(w, r, fmt.Errorf("register: part %q: %w", part.FormName(), err))
				return
			}
		}
		if uploaded != "" {
			spec.Dir = uploaded
		}
	} else if err := json.NewDecoder(io.LimitReader(r.Body, 1<<20)).Decode(&spec); err != nil {
		h.fail(w, r, fmt.Errorf("register: body is not a function spec: %w", err))
		return
	}
	if err := h.m.Register(r.Context(), functionOf(spec)); err != nil {
		if uploaded != "" && !errors.Is(err, ErrExists) {
			os.RemoveAll(uploaded)
		}
		h.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusCreated, spec)
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

func (h *Handler) delete(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	if err := h.m.Delete(name); err != nil {
		h.fail(w, r, err)
		return
	}
	if namePattern.MatchString(name) {
		os.RemoveAll(filepath.Join(h.codeDir, name))
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
