package dedup

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"strings"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/obdproject/obd/credentials"
	"github.com/obdproject/obd/imagelabels"
)

// Options configure Measure.
type Options struct {
	Platform string // for multi-platform images; default linux/amd64
	TempDir  string // where overlaybd blobs are staged to be read at random; default os.TempDir()
	// Progress, if set, is called before each layer is read.
	Progress func(image string, layer int, digest string, size int64)
}

// Measure reads every layer of the images (registry references, or oci:DIR[:TAG] layouts)
// and returns the report. Registry credentials come from Docker's config.json; registries on
// loopback addresses are spoken to over plain HTTP.
func Measure(ctx context.Context, images []string, opts Options) (Report, error) {
	if opts.Platform == "" {
		opts.Platform = "linux/amd64"
	}
	plat, err := v1.ParsePlatform(opts.Platform)
	if err != nil {
		return Report{}, fmt.Errorf("dedup: platform %q: %w", opts.Platform, err)
	}
	m := NewMeasurer()
	for _, ref := range images {
		img, err := openImage(ctx, ref, *plat)
		if err != nil {
			return Report{}, err
		}
		m.Image(ref)
		if err := measureImage(m, ref, img, opts); err != nil {
			return Report{}, err
		}
	}
	return m.Report(), nil
}

func openImage(ctx context.Context, ref string, plat v1.Platform) (v1.Image, error) {
	if dir, ok := strings.CutPrefix(ref, "oci:"); ok {
		tag := "latest"
		if i := strings.LastIndex(dir, ":"); i >= 0 {
			dir, tag = dir[:i], dir[i+1:]
		}
		idx, err := layout.ImageIndexFromPath(dir)
		if err != nil {
			return nil, fmt.Errorf("dedup: %s: %w", ref, err)
		}
		im, err := idx.IndexManifest()
		if err != nil {
			return nil, fmt.Errorf("dedup: %s: %w", ref, err)
		}
		for _, d := range im.Manifests {
			if d.Annotations["org.opencontainers.image.ref.name"] == tag {
				img, err := idx.Image(d.Digest)
				if err != nil {
					return nil, fmt.Errorf("dedup: %s: %w", ref, err)
				}
				return img, nil
			}
		}
		return nil, fmt.Errorf("dedup: %s: no image tagged %q", ref, tag)
	}
	var nopts []name.Option
	if loopbackRegistry(ref) {
		nopts = append(nopts, name.Insecure)
	}
	r, err := name.ParseReference(ref, nopts...)
	if err != nil {
		return nil, fmt.Errorf("dedup: %s: %w", ref, err)
	}
	creds, err := credentials.Load("")
	if err != nil {
		return nil, fmt.Errorf("dedup: %w", err)
	}
	img, err := remote.Image(r, remote.WithContext(ctx), remote.WithAuthFromKeychain(keychain{ctx, creds}), remote.WithPlatform(plat))
	if err != nil {
		return nil, fmt.Errorf("dedup: %s: %w", ref, err)
	}
	return img, nil
}

// keychain hands go-containerregistry the credentials of Docker's config.json as obd reads them
// (package credentials: the same file and helpers as bdd and obd convert).
type keychain struct {
	ctx   context.Context
	creds *credentials.Store
}

func (k keychain) Resolve(r authn.Resource) (authn.Authenticator, error) {
	user, secret, err := k.creds.Get(k.ctx, r.RegistryStr())
	if err != nil {
		return nil, err
	}
	if user == "" && secret == "" {
		return authn.Anonymous, nil
	}
	return authn.FromConfig(authn.AuthConfig{Username: user, Password: secret}), nil
}

// loopbackRegistry reports whether ref names a registry on localhost or a loopback address.
func loopbackRegistry(ref string) bool {
	host, _, _ := strings.Cut(ref, "/")
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	ip := net.ParseIP(host)
	return host == "localhost" || (ip != nil && ip.IsLoopback())
}

func measureImage(m *Measurer, ref string, img v1.Image, opts Options) error {
	mf, err := img.Manifest()
	if err != nil {
		return fmt.Errorf("dedup: %s: manifest: %w", ref, err)
	}
	for i, desc := range mf.Layers {
		d := desc.Digest.String()
		if m.Seen(d) {
			m.AddSeen(d)
			continue
		}
		if opts.Progress != nil {
			opts.Progress(ref, i, d, desc.Size)
		}
		layer, err := img.LayerByDigest(desc.Digest)
		if err != nil {
			return fmt.Errorf("dedup: %s: layer %s: %w", ref, d, err)
		}
		if _, ok := desc.Annotations[imagelabels.BlobDigest]; ok {
			err = measureOverlaybd(m, d, desc.Size, layer, opts.TempDir)
		} else {
			err = measureTar(m, d, desc.Size, layer)
		}
		if err != nil {
			return fmt.Errorf("dedup: %s: %w", ref, err)
		}
	}
	return nil
}

func measureTar(m *Measurer, d string, size int64, layer v1.Layer) error {
	rc, err := layer.Uncompressed()
	if err != nil {
		return fmt.Errorf("layer %s: %w", d, err)
	}
	defer rc.Close()
	return m.AddTar(d, size, rc)
}

// measureOverlaybd stages the blob in a temporary file, since its formats are read at random.
func measureOverlaybd(m *Measurer, d string, size int64, layer v1.Layer, dir string) error {
	rc, err := layer.Compressed()
	if err != nil {
		return fmt.Errorf("layer %s: %w", d, err)
	}
	defer rc.Close()
	f, err := os.CreateTemp(dir, "obd-dedup-*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	defer f.Close()
	n, err := io.Copy(f, io.LimitReader(rc, size+1))
	if err != nil {
		return fmt.Errorf("layer %s: %w", d, err)
	}
	if n != size {
		return fmt.Errorf("layer %s: blob has %d bytes, its descriptor says %d", d, n, size)
	}
	return m.AddOverlaybd(d, f, size)
}
