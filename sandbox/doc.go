// Package sandbox runs serverless functions in lean, SOCK-style sandboxes: the top box of the
// read path in docs/DESIGN.md ("container / sandbox"). An image's rootfs (an obd device's
// ext4, mounted read-only once per image by a RootfsProvider such as sandbox/bddrootfs, or a
// local directory via DirProvider) is the root of a detached mount tree per sandbox
// (tree.go), read-only, nosuid and nodev, with a size-capped scratch tmpfs at /tmp, the
// handler code read-only at /srv and the install cache read-only at /opt, and entered with
// chroot.
//
// Everything that comes from an image (its python3, its modules, a registrant's Imports) is
// untrusted and runs confined from exec onward (confine.go): in a user namespace mapped to an
// unprivileged uid range, with no_new_privs, a seccomp filter derived from containerd's
// default profile (seccomp.go) and rlimits; sandboxes as nobody holding no capability,
// zygotes holding only the four they need to make sandboxes (zygoteCaps).
//
// Three start paths, fastest last:
//   - cold: the server starts python3 in a fresh sandbox (runner.py, mode "cold");
//   - warm: a zygote (python3 that already imported the runtime's modules, and a function
//     zygote forked from it that imported the function's own) clones a child that joins its
//     cgroup, chroots into its own root (passed as a directory fd) and imports the handler.
//     Spare sandboxes (Config.SpareRoots per function) are cloned and set up ahead of demand
//     and wait, as nobody, for their first event: a warm start from a spare is importing the
//     handler and running it; with no spare left a sandbox is forked on demand;
//   - hot: an idle sandbox from the handler cache, frozen by the cgroup freezer, is thawed
//     (or a pre-warmed one gets its first event: path "prewarmed"; a lent one: "borrowed").
//
// A function registered with Checkpoint has a fourth, between cold and warm: "restored".
// Its sandbox, modules and handler imported, is checkpointed once with CRIU (package
// checkpoint), and a start with no warm zygote restores it instead of starting cold
// (checkpoint.go: such sandboxes are confined by package checkpoint, in a mount namespace
// of their own, as a detached tree cannot be dumped).
//
// How long an idle sandbox stays, and whether one is started ahead of an expected invocation
// (pre-warmed: set up and waiting, as a spare, but counted as a loaded instance), is decided
// per function by a Policy (policy.go; Config.Policies, which cmd/obd-lambda fills from
// package policy through policy/live), a fixed Config.KeepAlive without one. Under a reuse
// policy, a function with no idle sandbox borrows another function's that already holds its
// image and imports, scrubbed of the lender first (lend.go). Manager is the engine;
// Handler serves it over HTTP (cmd/obd-lambda). The API's types and its Client live apart, in
// sandbox/sandboxapi, so that clients (`obd sandbox`, policy/probe) do not link the engine.
//
// Choices, and the measurements behind them (BenchmarkStartPaths, `make bench-sandbox`):
//   - PID, UTS and IPC namespaces per sandbox. A zygote clones each sandbox straight into new
//     namespaces (clone(CLONE_NEWPID|...) from runner.py), so the handler is PID 1 of its own
//     namespace and cannot see or signal the host or other sandboxes; unshare+fork would cost a
//     second fork of the zygote (about 1 ms). The runtime zygote is PID 1 of a namespace the
//     server made, so killing it ends every sandbox forked from it.
//   - No mount namespace (as SOCK): a sandbox's root is a detached mount tree, private so
//     nothing propagates, and nodev (only null, zero, random and urandom are bound from the
//     host). The root, the cgroup with its limits and, with a zygote, the process are
//     prepared ahead (Config.SpareRoots): a fork on demand measured 4.5-7 ms p50 (zygote
//     round trip and clone 1.3 ms, the child's set-up 0.6 ms, handler import 0.75 ms, server
//     round trips), a start from a spare 0.8-1.0 ms. A spare also finds and reads the
//     handler's code (0.6 ms of a 0.7 ms import) but runs none of it before its event.
//   - The first event is sent with the start: the sandbox reads it once set up, so importing
//     and running the handler follow without waiting for a "ready" round trip.
//   - Network: a namespace per function, with only its loopback up: the function zygote makes
//     it once (the server brings the loopback up: no zygote holds CAP_NET_ADMIN) and the
//     sandboxes it forks share it, where creating one per sandbox measured
//     0.4-2.8 ms (rising under load). A cold sandbox gets one of its own. No host network, and
//     no abstract unix socket of another function, is reachable.
//   - cgroups from a pool (sandbox/cgroup; v1 hierarchies here, v2 where mounted). The sandbox
//     joins its group itself, writing "0" to cgroup.procs files the server passes it, before
//     any handler code runs (four v1 writes measured 0.1 ms). On v1 the pool holds one empty
//     group frozen, so freezing and thawing sandboxes never switches the freezer's kernel
//     static key (text patching on every CPU).
//   - Privileges: see above. A detached tree per sandbox instead of binds in the server's
//     mount namespace: ".." from a tree's root leads nowhere, so a zygote handed a sandbox's
//     root cannot walk out of it to the host, and a killed server leaves no mounts. Cloning a
//     function's tree and mounting a tmpfs on it measured 45 µs.
//   - Handler code is byte-compiled once at registration (a syntax error fails it), saving
//     about 1 ms per start. Zygotes import only modules named by the operator or the function
//     (from the image); handler code never runs in a zygote, which holds more than a sandbox
//     (zygoteCaps).
package sandbox
