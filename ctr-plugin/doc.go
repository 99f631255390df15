// Package ctrplugin holds the commands obd adds to containerd's ctr (cmd/ctr-obd): rpull,
// obdconv and record-trace. It sits above the read path of docs/DESIGN.md, next to nerdctl: it
// talks to containerd (which hands lazy layers to the overlaybd snapshotter), to bdd (traces and
// prefetch) and to the converter; it reads no image data itself.
package ctrplugin
