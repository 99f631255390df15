// Package snapshotter is obd's containerd snapshotter, served to containerd v2 as the proxy
// plugin `overlaybd`. It sits at the very top of the read path in docs/DESIGN.md: the ext4 on a
// block device (blockdev, attached through bdd) is mounted here and handed to containers,
// read-only under an overlayfs upper directory (rwMode "overlayfs") or as a writable device
// (rwMode "dev").
//
// Layers whose labels name an overlaybd blob (imagelabels.BlobDigest, imagelabels.BlobSize and the
// image reference) are prepared lazily: nothing is downloaded, the snapshot is committed on the
// spot and Prepare reports it as already existing, as remote snapshotters do. A container's
// snapshot on top of such a chain gets one device for the whole chain from a DeviceManager;
// containers of the same image share it, and it is detached when no snapshot needs it any more.
// Every other layer is handled exactly like containerd's overlayfs snapshotter, so the plugin is a
// drop-in replacement. Metadata lives in bbolt through containerd's snapshot storage package; what
// a snapshot is on disk (a lazy layer record, a device upper) lives in its directory, so a restart
// of this process loses nothing.
package snapshotter
