// Package sandboxapi is the contract of the sandbox server (cmd/obd-lambda, package sandbox):
// the types spoken over its HTTP API and the Client that speaks them. It sits beside the top
// box of the read path in docs/DESIGN.md ("container / sandbox"): callers such as `obd sandbox` and
// the policy probe (policy/probe) use it to reach the server without linking the engine, and the
// engine's Handler serves it. It imports the standard library only.
//
// The API:
//
//	POST   /functions            register: multipart with FormSpec (JSON FunctionSpec) and
//	                             FormCode (tar or tar.gz of the handler directory; ArchiveDir):
//	                             code arrives only by upload, never as a path on the server
//	GET    /functions            list: JSON []FunctionSpec
//	GET    /functions/NAME/stats counters: JSON Stats
//	GET    /stats                server-wide counters: JSON ServerStats
//	DELETE /functions/NAME       unregister
//	POST   /run/NAME             invoke: JSON event in, the handler's JSON result out, with
//	                             HeaderStartPath and HeaderStartTime set
//
// Errors are JSON ErrorBody with 400, 401 (no or wrong bearer token), 404, 409, 500 (handler
// raised), 502 (sandbox died), 504 (timeout); Client returns them as *APIError. A server on
// TCP requires "Authorization: Bearer TOKEN" on every request (Client.Token).
package sandboxapi

import (
	"fmt"
	"time"
)

// FunctionSpec is a function on the wire (register requests and listings). Zero limits take
// the server's defaults.
type FunctionSpec struct {
	Name      string   `json:"name"`
	Image     string   `json:"image"`
	Entry     string   `json:"entry"`
	MemoryMB  int64    `json:"memory_mb,omitempty"`
	CPUs      float64  `json:"cpus,omitempty"`
	Pids      int64    `json:"pids,omitempty"`
	TimeoutMS int64    `json:"timeout_ms,omitempty"`
	ScratchMB int64    `json:"scratch_mb,omitempty"` // size of its /tmp
	Imports   []string `json:"imports,omitempty"`
	Packages  []string `json:"packages,omitempty"`
	// Policy names the keep-alive and pre-warm policy of its idle sandboxes, as `obd sim`
	// names policies ("fixed-10m", "hybrid", "predictive", "reuse+hybrid"); empty: the
	// server's default.
	Policy string `json:"policy,omitempty"`
	// Checkpoint asks for restore starts: the server checkpoints an initialized sandbox of
	// the function (modules and handler imported) once, and a start with no warm zygote
	// restores it. Its memory after initialization is kept in the checkpoint.
	Checkpoint bool `json:"checkpoint,omitempty"`
}

// Stats are a function's counters.
type Stats struct {
	Name        string `json:"name"`
	Invocations int64  `json:"invocations"`
	Errors      int64  `json:"errors"`
	Cold        int64  `json:"cold"`
	Warm        int64  `json:"warm"`
	Hot         int64  `json:"hot"`
	PreWarmed   int64  `json:"prewarmed"` // served by a sandbox its policy started ahead
	Borrowed    int64  `json:"borrowed"`  // served by an idle sandbox lent by another function
	Restored    int64  `json:"restored"`  // served by a sandbox restored from its checkpoint
	Lent        int64  `json:"lent"`      // its idle sandboxes lent to other functions
	PreWarms    int64  `json:"prewarms"`  // sandboxes started ahead by its policy
	// IdleMBSeconds is memory (the function's limit) × time its sandboxes sat idle in the
	// handler cache, pre-warmed ones included, up to now: the simulator's wasted memory-time.
	IdleMBSeconds float64       `json:"idle_mb_seconds"`
	Idle          int           `json:"idle"`
	Busy          int           `json:"busy"`
	TotalTime     time.Duration `json:"total_time_ns"`
}

// StartPath says how the sandbox that served an invocation was obtained.
type StartPath string

const (
	Cold StartPath = "cold" // new process started by the server
	Warm StartPath = "warm" // forked from a zygote
	Hot  StartPath = "hot"  // thawed from the handler cache
	// PreWarmed: started ahead of the invocation by the function's policy (pre-warm), idle in
	// the handler cache.
	PreWarmed StartPath = "prewarmed"
	// Borrowed: another function's idle sandbox, lent under a reuse policy: its code, /tmp,
	// environment and modules scrubbed, the function's own code imported.
	Borrowed StartPath = "borrowed"
	// Restored: restored from the function's checkpoint (CRIU), its modules and handler
	// imported, where no zygote was warm.
	Restored StartPath = "restored"
)

// ServerStats are the server's counters over all functions.
type ServerStats struct {
	Functions int `json:"functions"`
	// Lends counts idle sandboxes lent to another function; ColdStartsSaved those lends
	// that served the invocation (each a start that did not happen); LendFailures the
	// lends that failed and fell back to a start.
	Lends           int64   `json:"lends"`
	ColdStartsSaved int64   `json:"cold_starts_saved"`
	LendFailures    int64   `json:"lend_failures"`
	PreWarms        int64   `json:"prewarms"`
	IdleMBSeconds   float64 `json:"idle_mb_seconds"`
}

// Response headers of POST /run/NAME.
const (
	HeaderStartPath = "X-Obd-Start-Path"   // cold, warm or hot
	HeaderStartTime = "X-Obd-Start-Micros" // time to a ready sandbox
)

// Form fields of a multipart register request. FormSpec comes first, so the server can name
// the code's directory after the function.
const (
	FormSpec = "spec"
	FormCode = "code"
)

// ErrorBody is the body of every error response.
type ErrorBody struct {
	Error string `json:"error"`
}

// APIError is an error response of the server.
type APIError struct {
	Status  int
	Message string
}

// Error implements error.
func (e *APIError) Error() string { return fmt.Sprintf("server: %s (HTTP %d)", e.Message, e.Status) }
