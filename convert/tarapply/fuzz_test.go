package tarapply_test

import (
	"bytes"
	"context"
	"testing"
	"time"

	"github.com/obdproject/obd/convert/tarapply"
)

// FuzzApply feeds arbitrary bytes as a layer tar: Apply may fail, but must not
// panic, hang or change anything outside the root.
func FuzzApply(f *testing.F) {
	f.Fuzz(func(t *testing.T, data []byte) {
		root, unchanged := sandbox(t)
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		_, _ = tarapply.Apply(ctx, root, bytes.NewReader(data), tarapply.Options{MaxEntrySize: 1 << 20, DeferRemoval: len(data)%2 == 0, ImplicitTime: time.Unix(946684800, 0)})
		if err := unchanged(); err != nil {
			t.Fatal(err)
		}
	})
}
