// Command obd is the user's command line for obd: the ZFile and LSMT layer tools,
// image conversion, and control of the block-device daemon (bdd).
//
// The command is thin: it parses flags and wires packages together; the logic lives
// in the packages (zfile, lsmt, convert, ...) so that tests reach it without a process.
package main

import (
	"fmt"
	"os"
)

func main() {
	if err := newRootCmd().Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "obd:", err)
		os.Exit(1)
	}
}
