package bdd

import (
	"os"
	"path/filepath"
	"reflect"
	"testing"
)

func TestStateStoreRoundTrip(t *testing.T) {
	dir := t.TempDir()
	s, err := OpenStateStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	a := DeviceSpec{ID: "a1", Layers: []LayerSpec{{Path: "/l/0"}, {Ref: "r/x", Digest: "sha256:00", Size: 9}}, UpperDir: "/u", ReadOnly: false, Transport: "fuse"}
	b := DeviceSpec{ID: "b2", Layers: []LayerSpec{{Path: "/l/1"}}, ReadOnly: true, Transport: "nbd"}
	for _, sp := range []DeviceSpec{b, a} {
		if err := s.Save(sp); err != nil {
			t.Fatal(err)
		}
	}
	// A crash between CreateTemp and Rename leaves a temp file behind; it must be ignored.
	if err := os.WriteFile(filepath.Join(dir, "devices", "c3.json.tmp123"), []byte("{"), 0o600); err != nil {
		t.Fatal(err)
	}
	reopened, err := OpenStateStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	got, err := reopened.LoadAll()
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, []DeviceSpec{a, b}) {
		t.Fatalf("LoadAll = %+v", got)
	}
	if err := reopened.Remove("a1"); err != nil {
		t.Fatal(err)
	}
	if err := reopened.Remove("a1"); err != nil {
		t.Fatalf("second remove: %v", err)
	}
	if got, _ := reopened.LoadAll(); len(got) != 1 || got[0].ID != "b2" {
		t.Fatalf("after remove: %+v", got)
	}
}

func TestStateStoreBadFiles(t *testing.T) {
	dir := t.TempDir()
	s, err := OpenStateStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Save(DeviceSpec{ID: "ok", Transport: "fuse"}); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, "devices", "garbage.json"), []byte("not json"), 0o600)
	os.WriteFile(filepath.Join(dir, "devices", "renamed.json"), []byte(`{"id":"other"}`), 0o600)
	got, err := s.LoadAll()
	if err == nil {
		t.Fatal("corrupt state files must be reported")
	}
	if len(got) != 1 || got[0].ID != "ok" {
		t.Fatalf("the good device must still load: %+v", got)
	}
	for _, id := range []string{"../escape", "", "UPPER", "a/b"} {
		if err := s.Save(DeviceSpec{ID: id}); err == nil {
			t.Errorf("Save accepted id %q", id)
		}
	}
}
