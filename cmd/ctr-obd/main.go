// Command ctr-obd is containerd v2.4.2's ctr with obd's commands added: rpull (pull only the
// metadata of an overlaybd image so it runs lazily), obdconv (convert an image, the engine of
// `obd convert`) and record-trace (record what a start reads, so later starts prefetch it).
// Everything else is upstream ctr unchanged; the logic lives in package ctrplugin.
package main

import (
	"context"
	"fmt"
	"os"

	"github.com/containerd/containerd/v2/cmd/ctr/app"

	ctrplugin "github.com/obdproject/obd/ctr-plugin"
)

func main() {
	cmd := app.New()
	cmd.Name = "ctr-obd"
	cmd.Commands = append(cmd.Commands, ctrplugin.Commands()...)
	if err := cmd.Run(context.Background(), os.Args); err != nil {
		fmt.Fprintf(os.Stderr, "ctr-obd: %v\n", err)
		os.Exit(1)
	}
}
