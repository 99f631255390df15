// Package sandbox runs serverless functions in lean, SOCK-style sandboxes: the last box of the
// read path in DESIGN.md ("ext4 mount ▶ ... / sandbox"). An image's rootfs (an obd device's
// ext4, mounted read-only once per image by a RootfsProvider) is bind-mounted read-only per
// sandbox, with a writable scratch dir at /tmp, the handler code at /srv and the install cache
// at /opt, and entered with chroot.
//
// A sandbox has its own PID, UTS and IPC namespaces, shares one pre-created empty network
// namespace with every other sandbox (no host network, and no per-sandbox netns cost), runs in
// a cgroup from a pool (package sandbox/cgroup) with memory, CPU and pids limits, and runs the
// handler as nobody with no capabilities.
//
// Three start paths, fastest last:
//   - cold: the server starts python3 in a fresh sandbox (runner.py, mode "cold");
//   - warm: a zygote (python3 that already imported the runtime's and the function's modules)
//     forks; the child joins its cgroup, unshares its namespaces, chroots into its own root
//     (passed as a directory fd) and imports the handler;
//   - hot: an idle sandbox from the handler cache, frozen by the cgroup freezer, is thawed.
//
// Idle sandboxes live for a fixed keep-alive TTL. Manager is the engine; Handler exposes it
// over HTTP (cmd/obd-lambda) and Client is what `obd sandbox` uses.
package sandbox
