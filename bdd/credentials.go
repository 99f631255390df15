package bdd

import (
	"context"
	"fmt"

	"github.com/opencontainers/go-digest"
	"golang.org/x/sync/errgroup"

	bddv1 "github.com/obdproject/obd/api/bdd/v1"
	"github.com/obdproject/obd/credentials"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// credentialSources is where bdd's registry credentials come from, first answer wins: the
// credentials CRI pulls brought (PutCredentials, per repository), kubelet's credential
// provider plugins, Docker's config.json (re-read when it changes).
func credentialSources(cfg RegistryConfig, pulled *credentials.Memory) (credentials.Source, error) {
	chain := credentials.Chain{pulled}
	if cfg.CredentialProviderConfig != "" {
		providers, err := credentials.LoadProviders(cfg.CredentialProviderConfig, cfg.CredentialProviderBinDir)
		if err != nil {
			return nil, fmt.Errorf("bdd: %w", err)
		}
		chain = append(chain, providers)
	}
	file, err := credentials.NewFile(cfg.DockerConfig)
	if err != nil {
		return nil, fmt.Errorf("bdd: %w", err)
	}
	return append(chain, file), nil
}

// PutCredentials keeps the credentials an image was pulled with, for its repository's blobs.
// Nothing of them is logged (the API call log names the method only) or stored.
func (s *Server) PutCredentials(_ context.Context, req *bddv1.PutCredentialsRequest) (*bddv1.PutCredentialsResponse, error) {
	if err := s.pulled.Put(req.GetRef(), req.GetUsername(), req.GetSecret()); err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	s.log.Info("credentials received", "ref", req.GetRef(), "repositories", s.pulled.Len())
	return &bddv1.PutCredentialsResponse{}, nil
}

// authorizeCached refuses a new device whose registry layers are on the node already (cached,
// perhaps brought by another image sharing them) when their image's repository does not let
// this node read them with the credentials it has (remotefetch.Authorize): a private image
// must not start on a node without its credentials because another image brought its bytes.
// Devices resumed after a restart are not checked: they were when they were attached.
func (s *Server) authorizeCached(ctx context.Context, spec DeviceSpec) error {
	var g errgroup.Group
	g.SetLimit(maxConcurrentOpens)
	for i, ls := range spec.Layers {
		if ls.Path != "" || ls.Ref == "" || ls.Indexed != nil {
			continue
		}
		g.Go(func() error {
			if err := s.fetcher.Authorize(ctx, ls.Ref, digest.Digest(ls.Digest), ls.Size, blobOptions(ls)...); err != nil {
				return fmt.Errorf("layer %d (%s): %w", i, ls.Name(), err)
			}
			return nil
		})
	}
	return g.Wait()
}
