package main

import "github.com/spf13/cobra"

// newRootCmd assembles the command tree. Each command family lives in its own file
// and contributes one constructor here.
func newRootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:           "obd",
		Short:         "overlaybd images: lazy block-device container images",
		Long:          "obd builds, inspects and serves overlaybd (DADI) images: ZFile-compressed LSMT layers\nthat containers and function sandboxes read lazily from a registry.",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(newZFileCmd(), newLayerCmd())
	root.AddCommand(newConvertCmd())
	root.AddCommand(newIndexCmd())
	root.AddCommand(newAttachCmd(), newDetachCmd(), newLsCmd(), newStatsCmd(), newTraceCmd())
	root.AddCommand(newSimCmd(), newProbeCmd(), newDedupReportCmd(), newFleetSimCmd(), newMirrorWarmCmd())
	root.AddCommand(newSandboxCmd())
	return root
}
