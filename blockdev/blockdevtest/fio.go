package blockdevtest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os/exec"
	"strings"
	"time"
)

// RandReadIOPS runs one fio job of 4 KiB random reads at queue depth depth for three
// seconds (after one of ramp-up) and returns its read IOPS. target holds the options
// naming what to read, e.g. "--filename=/dev/loop0", "--direct=1", "--ioengine=libaio".
func RandReadIOPS(depth int, target ...string) (float64, error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	args := append([]string{"--name=randread", "--rw=randread", "--bs=4k", fmt.Sprintf("--iodepth=%d", depth),
		"--ramp_time=1", "--runtime=3", "--time_based", "--output-format=json"}, target...)
	out, err := exec.CommandContext(ctx, "fio", args...).Output()
	if ee := (*exec.ExitError)(nil); errors.As(err, &ee) {
		out = append(out, ee.Stderr...)
	}
	if err != nil {
		return 0, fmt.Errorf("fio %s: %w\n%s", strings.Join(target, " "), err, out)
	}
	var res struct {
		Jobs []struct {
			Read struct {
				IOPS float64 `json:"iops"`
			} `json:"read"`
			Error int `json:"error"`
		} `json:"jobs"`
	}
	// Some engines (nbd) print a line before the JSON document.
	doc := out
	if i := bytes.IndexByte(doc, '{'); i > 0 {
		doc = doc[i:]
	}
	if err := json.Unmarshal(doc, &res); err != nil || len(res.Jobs) != 1 || res.Jobs[0].Error != 0 {
		return 0, fmt.Errorf("fio %s: unexpected output (%v):\n%s", strings.Join(target, " "), err, out)
	}
	return res.Jobs[0].Read.IOPS, nil
}
