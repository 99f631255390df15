// Package crie2e holds the end-to-end tests of obd on a Kubernetes node: containerd's CRI
// plugin configured as docs/containerd-cri.toml says (the README's Kubernetes section), driven
// by crictl the way kubelet drives it, with bdd and overlaybd-snapshotter run as the node runs
// them, against a real registry. It is test infrastructure (internal/, testing level 3 of
// docs/DESIGN.md) and has no code outside its tests.
package crie2e
