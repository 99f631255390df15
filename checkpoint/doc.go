// Package checkpoint checkpoints an initialized function handler process with CRIU and restores
// it: the checkpoint/restore start of the serverless literature (Catalyzer), where a cold start
// restores a process whose runtime is loaded and whose imports are done instead of starting one.
// It sits beside sandbox/ in docs/DESIGN.md, as a start path below the sandbox manager, and
// links none of obd's other packages: it runs the criu binary (4.x, built by
// scripts/build-criu.sh into OBD_DEPS/bin), it does not link a CRIU library.
//
// The contract with a handler:
//   - Start runs it as PID 1 of a new PID namespace and leader of its own session, with stdin,
//     stdout and stderr pipes to the caller: the whole namespace is the checkpointed tree, so
//     any number of restores of one image run side by side (each gets its own PID namespace and
//     PID 1 again), and no terminal or session outside the tree is needed.
//   - It talks to the caller over those pipes only. A checkpoint records the pipes' identities
//     (checkpoint.json beside CRIU's image files), and Restore hands the restored process new
//     pipes in their place (criu restore --inherit-fd). Files it keeps open must be the same,
//     at the same size, at restore: an open log file that grew makes the restore fail.
//   - It is dumped when quiescent, typically blocked reading its next request; Dump ends it.
//
// With Spec.Root the handler runs confined as a function sandbox is (nobody of a user namespace
// root owns, no capabilities, no_new_privs, its own network, IPC and UTS namespaces) but in a
// mount namespace of its own rooted in the image's rootfs (confine.go, confine.py): a tree
// CRIU can dump, where a sandbox's detached mount tree is not. Its checkpoint leaves the root
// out (an external mount), and Restore binds RestoreOptions.Root, any mount of the same image,
// in its place (docs/CHECKPOINT.md has the trade-offs).
//
// Restore runs criu with --restore-detached and --restore-sibling, so the restored process is a
// child of the caller, waited for and killed like one Start made. With RestoreOptions.LazyPages
// a `criu lazy-pages` daemon serves the private memory through userfaultfd: the process runs
// before its memory is copied in, and pages arrive on first touch or in the background.
//
// sandbox/ckptstart stores a checkpoint like an image (an obd layer artifact of the function's
// image, package ckptimage) and restores from it attached through bdd; Restore only needs the
// directory, which may be a read-only mount.
//
// criu keeps its probe of the kernel's features in KdatDir, a root-only tmpfs directory this
// package creates (see scripts/build-criu.sh for why), so only the first criu run on a boot
// pays for the probe.
package checkpoint
