package tracestore

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/obdproject/obd/blocktrace"
	"github.com/obdproject/obd/pagetrace"
)

func encodedTrace(t *testing.T, blob digest.Digest) []byte {
	t.Helper()
	tr := blocktrace.Trace{Blobs: []blocktrace.Blob{{
		Ref: "registry.local/app", Digest: blob, Size: 1 << 20,
		Ranges: []blocktrace.Range{{Off: 0, Len: 4096}, {Off: 65536, Len: 8192}},
	}}}
	enc, err := tr.Encode()
	if err != nil {
		t.Fatal(err)
	}
	return enc
}

func TestSaveLoad(t *testing.T) {
	s := Store{Dir: filepath.Join(t.TempDir(), "traces")}
	lower, upper := digest.FromString("lower"), digest.FromString("upper")
	chain, err := ChainID([]digest.Digest{lower, upper})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Load(chain); !errors.Is(err, ErrNoTrace) {
		t.Fatalf("Load before Save: %v, want ErrNoTrace", err)
	}
	first, second := encodedTrace(t, lower), encodedTrace(t, upper)
	if err := s.Save(chain, first); err != nil {
		t.Fatal(err)
	}
	if err := s.Save(chain, second); err != nil {
		t.Fatal(err)
	}
	got, err := s.Load(chain)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, second) {
		t.Fatalf("Load = %q, want the second save %q", got, second)
	}
	entries, err := os.ReadDir(s.Dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 1 {
		t.Fatalf("store holds %d files, want 1 (no temp files left)", len(entries))
	}
}

func TestChainIDDependsOnOrder(t *testing.T) {
	a, b := digest.FromString("a"), digest.FromString("b")
	ab, err := ChainID([]digest.Digest{a, b})
	if err != nil {
		t.Fatal(err)
	}
	ba, err := ChainID([]digest.Digest{b, a})
	if err != nil {
		t.Fatal(err)
	}
	if ab == ba {
		t.Fatal("chain IDs of reordered layers are equal")
	}
	if single, _ := ChainID([]digest.Digest{a}); single != a {
		t.Fatalf("chain ID of one layer = %s, want the layer's digest %s", single, a)
	}
	if _, err := ChainID(nil); err == nil {
		t.Fatal("ChainID of no layers succeeded")
	}
	if _, err := ChainID([]digest.Digest{"sha256:short"}); err == nil {
		t.Fatal("ChainID accepted a malformed digest")
	}
}

func TestBadTracesAreRefused(t *testing.T) {
	s := Store{Dir: t.TempDir()}
	chain := digest.FromString("c")
	if err := s.Save(chain, []byte("not a trace")); !errors.Is(err, blocktrace.ErrBadTrace) {
		t.Fatalf("Save of garbage: %v, want ErrBadTrace", err)
	}
	if err := os.WriteFile(s.Path(chain), []byte(`{"version":1,"blobs":[{"digest":"x"}]}`), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Load(chain); !errors.Is(err, blocktrace.ErrBadTrace) {
		t.Fatalf("Load of a corrupt file: %v, want ErrBadTrace", err)
	}
	if err := s.Save("sha256:nope", encodedTrace(t, chain)); err == nil {
		t.Fatal("Save accepted a malformed chain ID")
	}
}

func TestSaveLoadPages(t *testing.T) {
	s := Store{Dir: filepath.Join(t.TempDir(), "traces")}
	chain, err := ChainID([]digest.Digest{digest.FromString("only")})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.LoadPages(chain); !errors.Is(err, ErrNoTrace) {
		t.Fatalf("LoadPages before SavePages: %v, want ErrNoTrace", err)
	}
	pages := pagetrace.Trace{{Path: "usr/bin/python3", Off: 0, Len: 4096}}
	if err := s.SavePages(chain, pages); err != nil {
		t.Fatal(err)
	}
	got, err := s.LoadPages(chain)
	if err != nil || !reflect.DeepEqual(got, pages) {
		t.Fatalf("LoadPages = %v, %v; want %v", got, err, pages)
	}
	if _, err := s.Load(chain); !errors.Is(err, ErrNoTrace) {
		t.Fatalf("a page trace is not a block trace: Load = %v", err)
	}
	if err := os.WriteFile(s.PagesPath(chain), []byte("obd-pagetrace v1\n0 1 \"../x\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := s.LoadPages(chain); !errors.Is(err, pagetrace.ErrBadTrace) {
		t.Fatalf("LoadPages of a trace leaving the root: %v, want ErrBadTrace", err)
	}
}
