package kernelnbd

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/obdproject/obd/blockdev"
	"github.com/obdproject/obd/blockdev/blockdevtest"
	"github.com/obdproject/obd/internal/facility"
)

func TestAvailableMatchesMachine(t *testing.T) {
	_, statErr := os.Stat("/dev/nbd0")
	err := Available()
	if (statErr == nil) != (err == nil) {
		t.Fatalf("Available() = %v while stat /dev/nbd0 = %v", err, statErr)
	}
	if err != nil && err.Error() != "no /dev/nbd0: nbd kernel module absent" {
		t.Errorf("message %q", err)
	}
}

func TestAttachWithoutModuleFailsFast(t *testing.T) {
	if Available() == nil {
		t.Skip("nbd module present: covered by TestKernelNBD")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := Attach(ctx, blockdevtest.NewMem(1<<20), Options{}); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("Attach: %v, want ErrUnavailable", err)
	}
}

func TestFreeDevice(t *testing.T) {
	sys := t.TempDir()
	for _, dev := range []string{"nbd0", "nbd1", "nbd10", "nbd2"} {
		if err := os.Mkdir(filepath.Join(sys, dev), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	busy := func(dev string) {
		if err := os.WriteFile(filepath.Join(sys, dev, "pid"), []byte("1\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	busy("nbd0")
	busy("nbd1")
	if got, err := freeDevice(sys); err != nil || got != "/dev/nbd2" {
		t.Errorf("freeDevice = %q, %v; want /dev/nbd2 (numeric order, nbd10 after nbd2)", got, err)
	}
	busy("nbd2")
	busy("nbd10")
	if _, err := freeDevice(sys); !errors.Is(err, blockdev.ErrBusy) {
		t.Errorf("all busy: %v, want ErrBusy", err)
	}
	if _, err := freeDevice(t.TempDir()); !errors.Is(err, ErrUnavailable) {
		t.Errorf("no devices: %v, want ErrUnavailable", err)
	}
}

func TestClientOptions(t *testing.T) {
	o := Options{Timeout: 30 * time.Second}.clientOptions(nil)
	if o.BlockSize != 4096 || o.Timeout != 30 || o.ExportName != "" {
		t.Errorf("defaults: %+v", o)
	}
	if o := (Options{BlockSize: 512}).clientOptions(nil); o.BlockSize != 512 {
		t.Errorf("block size not passed: %+v", o)
	}
}

// TestKernelNBD needs the nbd module; it cannot run on machines without it.
func TestKernelNBD(t *testing.T) {
	if err := Available(); err != nil {
		facility.Absent(t, facility.KernelNBD, err.Error())
	}
	mem := blockdevtest.NewMem(16 << 20)
	mem.WriteAt([]byte("hello"), 4096)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	d, err := Attach(ctx, mem, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	ra, err := os.ReadFile(filepath.Join("/sys/class/block", filepath.Base(d.Path()), "queue/read_ahead_kb"))
	if err != nil || strings.TrimSpace(string(ra)) != strconv.Itoa(blockdev.ReadAheadKB) {
		t.Errorf("%s readahead %q (%v), want %d KiB", d.Path(), ra, err, blockdev.ReadAheadKB)
	}
	f, err := os.Open(d.Path())
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 5)
	if _, err := f.ReadAt(buf, 4096); err != nil || string(buf) != "hello" {
		t.Fatalf("read through %s: %q %v", d.Path(), buf, err)
	}
}
