package main

import (
	"encoding/json"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/obdproject/obd/dedup"
)

func newDedupReportCmd() *cobra.Command {
	var (
		opts   dedup.Options
		asJSON bool
	)
	cmd := &cobra.Command{
		Use:   "dedup-report IMAGE...",
		Short: "Measure duplicate bytes over a set of images at layer, file and block level",
		Long: "dedup-report reads every layer of the images (registry references or oci:DIR[:TAG] layouts)\n" +
			"and prints how much of what they reference is duplicate: whole layers, regular-file contents\n" +
			"(OCI tar layers), 4 KiB blocks (of file contents; of the device's data for overlaybd layers)\n" +
			"and ZFile blocks (overlaybd layers), and how much obd convert's layer reuse saves among the\n" +
			"overlaybd images. Give OCI images and their conversions together to compare both.",
		Example: "  obd dedup-report oci:/opt/obd-deps/images/dedup-set:python oci:/opt/obd-deps/images/dedup-set:gcc\n" +
			"  obd dedup-report registry.local:5000/app:v1 registry.local:5000/app:v1-obd",
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			opts.Progress = func(image string, layer int, digest string, size int64) {
				fmt.Fprintf(cmd.ErrOrStderr(), "dedup-report: %s layer %d %s (%d bytes)\n", image, layer, digest, size)
			}
			r, err := dedup.Measure(cmd.Context(), args, opts)
			if err != nil {
				return err
			}
			if asJSON {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				return enc.Encode(r)
			}
			_, err = fmt.Fprint(cmd.OutOrStdout(), r.Markdown())
			return err
		},
	}
	cmd.Flags().StringVar(&opts.Platform, "platform", "linux/amd64", "platform of multi-platform images")
	cmd.Flags().StringVar(&opts.TempDir, "temp-dir", "", "where overlaybd blobs are staged while read (default $TMPDIR)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the report as JSON")
	return cmd
}
