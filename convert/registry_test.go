package convert_test

import (
	archivetar "archive/tar"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/obdproject/obd/convert"
	"github.com/obdproject/obd/convert/internal/fixture"
	"github.com/obdproject/obd/convert/internal/fstree"
	"github.com/obdproject/obd/convert/tarapply"
	"github.com/obdproject/obd/imagelabels"
	"github.com/obdproject/obd/internal/testregistry"
	"github.com/obdproject/obd/layerblob"
	"github.com/obdproject/obd/lsmt"
	"github.com/obdproject/obd/remotefetch"
	"github.com/obdproject/obd/zfile"
)

// dockerConfig writes a config.json holding the registry's credentials.
// registryConverter starts a registry that needs credentials and a zstd converter that
// works in tmp and holds them; it returns the registry, the docker config and the converter.
func registryConverter(t *testing.T, tmp string) (*testregistry.Registry, string, *convert.Converter) {
	t.Helper()
	reg := testregistry.Start(t, testregistry.Options{Auth: testregistry.AuthBasic})
	cfgPath := dockerConfig(t, reg)
	c, err := convert.New(convert.Options{WorkDir: filepath.Join(tmp, "work"), VirtualSize: 256 << 20,
		Algorithm: zfile.ZSTD, Registry: convert.RegistryOptions{DockerConfig: cfgPath}})
	if err != nil {
		t.Fatal(err)
	}
	return reg, cfgPath, c
}

func dockerConfig(t *testing.T, reg *testregistry.Registry) string {
	t.Helper()
	auth := base64.StdEncoding.EncodeToString([]byte("obd:" + reg.Password()))
	b, _ := json.Marshal(map[string]any{"auths": map[string]any{reg.Host: map[string]string{"auth": auth}}})
	p := filepath.Join(t.TempDir(), "config.json")
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// registryHas reports whether the registry serves path below /v2/ (HEAD).
func registryHas(t *testing.T, reg *testregistry.Registry, path string) bool {
	t.Helper()
	req, _ := http.NewRequest(http.MethodHead, reg.URL+"/v2/"+path, nil)
	req.SetBasicAuth("obd", reg.Password())
	req.Header.Set("Accept", ocispec.MediaTypeImageManifest+", "+ocispec.MediaTypeImageIndex)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// cachedBlobs lists the digests of the converted layers in a work directory.
func cachedBlobs(t *testing.T, work string) []string {
	t.Helper()
	paths, err := filepath.Glob(filepath.Join(work, "layers", "*", "descriptor.json"))
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, p := range paths {
		var d ocispec.Descriptor
		readJSON(t, p, &d)
		out = append(out, d.Digest.String())
	}
	return out
}

// TestConvertToRegistryAndLazyRead converts the fixture into a registry that
// requires credentials, checks the result equals the OCI-layout conversion,
// then mounts it through remotefetch (lazy range reads) and compares trees.
func TestConvertToRegistryAndLazyRead(t *testing.T) {
	requireDevices(t)
	tmp := t.TempDir()
	reg, cfgPath, c := registryConverter(t, tmp)
	src := fixtureLayout(t)
	ctx := context.Background()
	ref := reg.Host + "/fixture/app:obd"
	res, err := c.Convert(ctx, "oci:"+src+":v1", ref)
	if err != nil {
		t.Fatal(err)
	}
	layoutDst := filepath.Join(tmp, "dst")
	res2, err := c.Convert(ctx, "oci:"+src+":v1", "oci:"+layoutDst+":obd")
	if err != nil {
		t.Fatal(err)
	}
	if res.Descriptor.Digest != res2.Descriptor.Digest {
		t.Fatalf("registry and layout conversions differ: %s vs %s", res.Descriptor.Digest, res2.Descriptor.Digest)
	}
	if !registryHas(t, reg, "fixture/app/manifests/obd") || !registryHas(t, reg, "fixture/app/blobs/"+cachedBlobs(t, filepath.Join(tmp, "work"))[0]) {
		t.Fatal("the registry does not serve the converted image")
	}
	// The registry is now a source: converting its overlaybd image is a no-op.
	if _, err := c.Convert(ctx, ref, reg.Host+"/fixture/app:again"); !errors.Is(err, convert.ErrAlreadyConverted) {
		t.Errorf("re-converting from the registry: %v, want ErrAlreadyConverted", err)
	}

	man := readManifest(t, layoutDst, "obd")
	f, err := remotefetch.New(remotefetch.Options{CacheDir: filepath.Join(tmp, "cache"), DockerConfig: cfgPath, BackgroundDelay: -1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	var layers []lsmt.Layer
	for _, l := range man.Layers {
		table, off, err := imagelabels.ParseRangeTable(l.Annotations[imagelabels.RangeTable], l.Annotations[imagelabels.RangeTableOffset], l.Size)
		if err != nil || table == "" {
			t.Fatalf("layer %s: no range table (%v)", l.Digest, err)
		}
		b, err := f.Open(ctx, ref, l.Digest, l.Size, remotefetch.WithRangeTable(table, off))
		if err != nil {
			t.Fatal(err)
		}
		fl, err := layerblob.Open(b, l.Size, l.Digest.String())
		if err != nil {
			t.Fatal(err)
		}
		layers = append(layers, fl)
	}
	lazy := mountLayers(t, layers)
	want, err := fstree.Snapshot(mountConverted(t, layoutDst, man), fstree.Options{})
	if err != nil {
		t.Fatal(err)
	}
	got, err := fstree.Snapshot(lazy, fstree.Options{})
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range fstree.Diff(want, got) {
		t.Error(d)
	}
	if b, err := os.ReadFile(filepath.Join(lazy, "etc/hello")); err != nil || string(b) != "hello again\n" {
		t.Errorf("etc/hello through the registry = %q, %v", b, err)
	}
}

// hostileImage writes an OCI layout whose second layer carries bad entries.
func hostileImage(t *testing.T, bad []byte) string {
	t.Helper()
	good, err := fixture.Tar([]fixture.Entry{fixture.Dir("etc", 0o755, 0), fixture.File("etc/ok", 0o644, 0, "ok\n")}, true)
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "hostile")
	if err := fixture.WriteLayout(dir, "v1", [][]byte{good, bad}); err != nil {
		t.Fatal(err)
	}
	return dir
}

// TestConvertHostileNothingPushed converts images with hostile layers: each
// fails with an error naming the layer and the entry, and neither the registry
// nor the layout destination receives anything.
func TestConvertHostileNothingPushed(t *testing.T) {
	requireDevices(t)
	reg := testregistry.Start(t, testregistry.Options{Auth: testregistry.AuthBasic})
	cfgPath := dockerConfig(t, reg)
	tar := func(es ...fixture.Entry) []byte { return fixture.MustTar(t, es...) }
	full := tar(fixture.File("big", 0o644, 0, strings.Repeat("z", 8192)))
	var huge bytes.Buffer // a header claiming 1 TiB, then nothing
	if err := archivetar.NewWriter(&huge).WriteHeader(&archivetar.Header{Name: "huge", Typeflag: archivetar.TypeReg, Mode: 0o644, Size: 1 << 40}); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name  string
		layer []byte
		want  error
		entry string
	}{
		{"traversal", tar(fixture.File("../../evil", 0o644, 0, "x")), tarapply.ErrUnsafePath, "../../evil"},
		{"symlink then write", tar(fixture.Symlink("etc/ok", "/../../../tmp/evil", 0), fixture.Hardlink("h", "../etc/passwd")), tarapply.ErrUnsafePath, "h"},
		{"truncated", full[:4096], nil, "big"},
		{"huge size", huge.Bytes(), tarapply.ErrTooLarge, "huge"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			src := hostileImage(t, tc.layer)
			tmp := t.TempDir()
			c, err := convert.New(convert.Options{WorkDir: filepath.Join(tmp, "work"), VirtualSize: 128 << 20,
				Registry: convert.RegistryOptions{DockerConfig: cfgPath}})
			if err != nil {
				t.Fatal(err)
			}
			repo := "hostile/" + strings.ReplaceAll(tc.name, " ", "-")
			for _, dst := range []string{reg.Host + "/" + repo + ":obd", "oci:" + filepath.Join(tmp, "dst")} {
				_, err := c.Convert(context.Background(), "oci:"+src+":v1", dst)
				if err == nil {
					t.Fatalf("%s: conversion succeeded", dst)
				}
				if tc.want != nil && !errors.Is(err, tc.want) {
					t.Errorf("%s: error %v, want %v", dst, err, tc.want)
				}
				if !strings.Contains(err.Error(), "layer 2") || !strings.Contains(err.Error(), tc.entry) {
					t.Errorf("%s: error %q does not name layer 2 and entry %q", dst, err, tc.entry)
				}
			}
			blobs := cachedBlobs(t, filepath.Join(tmp, "work"))
			if len(blobs) == 0 {
				t.Fatal("the good first layer was not converted: the test proves nothing")
			}
			for _, b := range blobs {
				if registryHas(t, reg, repo+"/blobs/"+b) {
					t.Errorf("registry received blob %s of a failed conversion", b)
				}
			}
			if registryHas(t, reg, repo+"/manifests/obd") {
				t.Error("registry received the tag of a failed conversion")
			}
			if _, err := os.Stat(filepath.Join(tmp, "dst")); !os.IsNotExist(err) {
				t.Errorf("layout destination exists after a failed conversion: %v", err)
			}
		})
	}
}

// TestConvertHostsToml pushes to a registry name that only a containerd
// hosts.toml (certs.d layout) maps to the test registry.
func TestConvertHostsToml(t *testing.T) {
	requireDevices(t)
	reg := testregistry.Start(t, testregistry.Options{})
	hostsDir := t.TempDir()
	const name = "registry.invalid:5000"
	if err := os.MkdirAll(filepath.Join(hostsDir, name), 0o755); err != nil {
		t.Fatal(err)
	}
	toml := "server = \"" + reg.URL + "\"\n[host.\"" + reg.URL + "\"]\n  capabilities = [\"pull\", \"resolve\", \"push\"]\n"
	if err := os.WriteFile(filepath.Join(hostsDir, name, "hosts.toml"), []byte(toml), 0o644); err != nil {
		t.Fatal(err)
	}
	tmp := t.TempDir()
	c, err := convert.New(convert.Options{WorkDir: filepath.Join(tmp, "work"), VirtualSize: 128 << 20,
		Registry: convert.RegistryOptions{HostsDir: hostsDir, DockerConfig: filepath.Join(tmp, "none.json")}})
	if err != nil {
		t.Fatal(err)
	}
	src := hostileImage(t, fixture.MustTar(t, fixture.File("etc/more", 0o644, 0, "more\n")))
	if _, err := c.Convert(context.Background(), "oci:"+src+":v1", name+"/team/app:obd"); err != nil {
		t.Fatal(err)
	}
	if !registryHas(t, reg, "team/app/manifests/obd") {
		t.Error("the test registry has no team/app:obd: hosts.toml was not used")
	}
	// And back: the converted image resolves through the same hosts.toml.
	if _, err := c.Convert(context.Background(), name+"/team/app:obd", "oci:"+filepath.Join(tmp, "out")); !errors.Is(err, convert.ErrAlreadyConverted) {
		t.Errorf("reading back through hosts.toml: %v, want ErrAlreadyConverted", err)
	}
}

// TestConvertSilentRegistry: a registry that accepts connections and then says nothing makes
// the conversion fail once RegistryOptions.Timeout passes without a byte, naming the host,
// instead of waiting for ever.
func TestConvertSilentRegistry(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	var conns []net.Conn
	var mu sync.Mutex
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c) // held open, never answered
			mu.Unlock()
		}
	}()
	defer func() {
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	}()
	c, err := convert.New(convert.Options{WorkDir: filepath.Join(t.TempDir(), "work"),
		Registry: convert.RegistryOptions{PlainHTTP: true, Timeout: time.Second}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute) // a hang guard only
	defer cancel()
	_, err = c.Convert(ctx, l.Addr().String()+"/app:v1", "oci:"+filepath.Join(t.TempDir(), "out"))
	if err == nil || !strings.Contains(err.Error(), "silent") || !strings.Contains(err.Error(), l.Addr().String()) {
		t.Fatalf("Convert from a silent registry: %v, want an error saying the registry was silent", err)
	}
}
