// Package criproxy is a CRI image service that stands between kubelet and containerd's CRI
// plugin and hands the credentials of each image pull to bdd. kubelet sends a pod's pull
// secrets with PullImage only; containerd uses them for the manifest and config and passes
// them to no snapshotter, so the lazy blob reads bdd does later would have none. Configured
// as kubelet's imageServiceEndpoint, the proxy forwards every image call to containerd
// unchanged and, before a pull that carries auth, gives bdd the credentials for that image's
// repository (bdd's PutCredentials: kept in memory, replaced by the next pull's).
//
// It sits beside the snapshotter at the top of the process picture of docs/DESIGN.md and is
// served by cmd/overlaybd-snapshotter; it reaches bdd through its API only.
package criproxy

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"strings"

	"github.com/distribution/reference"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"

	bddv1 "github.com/obdproject/obd/api/bdd/v1"
)

// Sink receives the credentials a pull carries, for the repository of ref.
type Sink interface {
	PutCredentials(ctx context.Context, ref, username, secret string) error
}

// BDDSink hands credentials to bdd over its control API.
type BDDSink struct{ Client bddv1.DaemonClient }

// PutCredentials implements Sink.
func (b BDDSink) PutCredentials(ctx context.Context, ref, username, secret string) error {
	_, err := b.Client.PutCredentials(ctx, &bddv1.PutCredentialsRequest{Ref: ref, Username: username, Secret: secret})
	return err
}

// ErrBadAuth reports a PullImage auth that cannot be used. Its messages never quote the auth.
var ErrBadAuth = errors.New("criproxy: bad pull auth")

// Proxy is the image service: containerd's, with pull credentials copied to a Sink.
type Proxy struct {
	runtime.UnimplementedImageServiceServer
	upstream runtime.ImageServiceClient
	sink     Sink
	log      *slog.Logger
}

// New returns a Proxy forwarding to upstream (containerd's CRI image service).
func New(upstream runtime.ImageServiceClient, sink Sink, log *slog.Logger) *Proxy {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Proxy{upstream: upstream, sink: sink, log: log}
}

// PullImage gives the sink the pull's credentials for the image's repository, then forwards
// the pull. A sink that fails fails the pull (kubelet retries it): a pull that succeeded
// without them would leave containers that cannot read their image.
func (p *Proxy) PullImage(ctx context.Context, req *runtime.PullImageRequest) (*runtime.PullImageResponse, error) {
	if auth := req.GetAuth(); auth != nil {
		ref := req.GetImage().GetImage()
		named, err := reference.ParseNormalizedNamed(ref)
		if err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "criproxy: image %q: %v", ref, err)
		}
		user, secret, err := parseAuth(auth, reference.Domain(named))
		if err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "image %q: %v", ref, err)
		}
		if user != "" || secret != "" {
			if err := p.sink.PutCredentials(ctx, named.String(), user, secret); err != nil {
				p.log.Warn("pull credentials not handed to bdd", "image", named.String(), "err", err)
				return nil, status.Errorf(codes.Unavailable, "criproxy: hand the credentials of %s to bdd: %v", named.String(), status.Convert(err).Message())
			}
			p.log.Debug("pull credentials handed to bdd", "image", named.String())
		}
	}
	return p.upstream.PullImage(ctx, req)
}

// parseAuth returns the username and secret of a CRI auth config for registry domain, the way
// containerd's CRI plugin reads it: nothing when ServerAddress names another host; username
// and password; an identity token as the secret; or the base64 "user:password" of Auth.
func parseAuth(auth *runtime.AuthConfig, domain string) (string, string, error) {
	if addr := auth.GetServerAddress(); addr != "" {
		u, err := url.Parse(addr)
		if err != nil {
			return "", "", fmt.Errorf("%w: server address is not a URL", ErrBadAuth)
		}
		host := u.Host
		if host == "" {
			host = addr // a bare host name
		}
		if host != domain && !(domain == "docker.io" && (host == "index.docker.io" || host == "registry-1.docker.io")) {
			return "", "", nil
		}
	}
	switch {
	case auth.GetUsername() != "":
		return auth.GetUsername(), auth.GetPassword(), nil
	case auth.GetIdentityToken() != "":
		return "", auth.GetIdentityToken(), nil
	case auth.GetAuth() != "":
		raw, err := base64.StdEncoding.DecodeString(auth.GetAuth())
		if err != nil {
			return "", "", fmt.Errorf("%w: auth is not base64", ErrBadAuth)
		}
		user, pass, ok := strings.Cut(string(raw), ":")
		if !ok {
			return "", "", fmt.Errorf("%w: auth is not user:password", ErrBadAuth)
		}
		return user, strings.Trim(pass, "\x00"), nil
	}
	return "", "", nil
}

// ListImages forwards to containerd.
func (p *Proxy) ListImages(ctx context.Context, req *runtime.ListImagesRequest) (*runtime.ListImagesResponse, error) {
	return p.upstream.ListImages(ctx, req)
}

// StreamImages forwards containerd's stream.
func (p *Proxy) StreamImages(req *runtime.StreamImagesRequest, stream grpc.ServerStreamingServer[runtime.StreamImagesResponse]) error {
	up, err := p.upstream.StreamImages(stream.Context(), req)
	if err != nil {
		return err
	}
	for {
		resp, err := up.Recv()
		if err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
		if err := stream.Send(resp); err != nil {
			return err
		}
	}
}

// ImageStatus forwards to containerd.
func (p *Proxy) ImageStatus(ctx context.Context, req *runtime.ImageStatusRequest) (*runtime.ImageStatusResponse, error) {
	return p.upstream.ImageStatus(ctx, req)
}

// RemoveImage forwards to containerd.
func (p *Proxy) RemoveImage(ctx context.Context, req *runtime.RemoveImageRequest) (*runtime.RemoveImageResponse, error) {
	return p.upstream.RemoveImage(ctx, req)
}

// ImageFsInfo forwards to containerd.
func (p *Proxy) ImageFsInfo(ctx context.Context, req *runtime.ImageFsInfoRequest) (*runtime.ImageFsInfoResponse, error) {
	return p.upstream.ImageFsInfo(ctx, req)
}
