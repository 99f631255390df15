// Package bdd is obd's block-device daemon: it builds the read path of docs/DESIGN.md from the
// registry up to the blockdev box. For each Attach request it opens the lower layers
// (local files, or registry blobs through remotefetch and its cache), stacks them
// with an optional writable upper (lsmt.Stack) and exposes the stack through a
// transport (FUSE file + loop device, or an NBD export). It serves the control API of
// api/bdd/v1 over a unix socket and persists each device under its state dir, so a
// restarted daemon brings every device back.
package bdd
