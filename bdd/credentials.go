package bdd

import (
	"context"
	"fmt"

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
